import { parseArgs } from 'node:util';
import OpenAI from 'openai';
import { formatAmount } from '../src/money/money.ts';
import { createLogger } from '../src/telemetry/logger.ts';
import { startDev } from './dev.ts';

const DEMO_USAGE = `Usage: tollgate demo [--manifests PATH] [--wallet NAME] [--model MODEL]

Starts local mode on a free port, then calls the OpenAI chat API through it with
the official openai SDK, alternating plain and streamed calls, until the wallet
cannot pay for the next one. Prints each charge, the refusal, and a final check
that the balance equals the grants minus the recorded charges.`;

interface WalletRow {
  wallet: string;
  granted: string;
  spent: string;
  available: string;
  balance: string;
  nano: { balance: string; spent: string };
}

/** Runs the demo and returns the process exit code. */
export async function runDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      manifests: { type: 'string', default: 'examples' },
      wallet: { type: 'string', default: 'default/demo' },
      model: { type: 'string', default: 'gpt-4.1' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(DEMO_USAGE);
    return 0;
  }

  const server = await startDev({
    manifests: values.manifests,
    host: '127.0.0.1',
    port: 0,
    redisUrl: undefined,
    wallet: values.wallet,
    env: process.env,
    log: createLogger('tollgate-demo', process.env.LOG_LEVEL ?? 'warn'),
    watch: false,
  });

  try {
    const client = new OpenAI({ baseURL: `${server.url}/openai/v1`, apiKey: 'unused-the-sidecar-holds-the-key', maxRetries: 0 });
    const walletOf = async (): Promise<WalletRow> => {
      const response = await fetch(`${server.url}/tollgate/v1/wallets`);
      const { wallets } = (await response.json()) as { wallets: WalletRow[] };
      return wallets.find((row) => row.wallet === values.wallet)!;
    };

    const start = await walletOf();
    console.log(`Tollgate sidecar on ${server.url}, provider: ${server.simulated.length > 0 ? 'simulator' : 'real API'}`);
    console.log(`Wallet ${values.wallet}: ${start.available} USD available\n`);

    let charged = 0n;
    for (let call = 1; call <= 100; call++) {
      const stream = call % 2 === 0;
      const before = BigInt((await walletOf()).nano.spent);
      try {
        if (stream) {
          const chunks = await client.chat.completions.create({
            model: values.model,
            messages: [{ role: 'user', content: 'Say hello in five words.' }],
            max_tokens: 32,
            stream: true,
          });
          for await (const _chunk of chunks) {
            // The reply is consumed; the sidecar meters it as it passes.
          }
        } else {
          await client.chat.completions.create({
            model: values.model,
            messages: [{ role: 'user', content: 'Say hello in five words.' }],
            max_tokens: 32,
          });
        }
      } catch (error) {
        if (error instanceof OpenAI.APIError) {
          // The SDK's message starts with the status code, which the line already shows.
          console.log(`call ${call} refused: HTTP ${error.status}: ${error.message.replace(/^\d{3} /, '')}`);
          break;
        }
        throw error;
      }
      const after = await walletOf();
      const cost = BigInt(after.nano.spent) - before;
      charged += cost;
      console.log(`call ${call} (${stream ? 'streamed' : 'plain'}): charged ${formatAmount(cost)} USD, ${after.available} USD left`);
    }

    const end = await walletOf();
    const balanceMatches = BigInt(end.nano.balance) === BigInt(start.nano.balance) - charged;
    console.log(`\nGranted ${end.granted} USD, spent ${end.spent} USD, balance ${end.balance} USD`);
    console.log(`Balance equals grants minus recorded charges: ${balanceMatches ? 'yes' : 'NO'}`);
    return balanceMatches ? 0 : 1;
  } finally {
    await server.close();
  }
}
