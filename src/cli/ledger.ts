import { parseArgs } from 'node:util';
import { RedisLedger } from '../ledger/redis.ts';
import { formatAmount } from '../money/money.ts';

const LEDGER_USAGE = `Usage: tollgate ledger <state|verify> --redis URL --wallet NAMESPACE/NAME

  state    Print the wallet's totals: granted, spent, expired, reserved, balance, available
  verify   Replay the wallet's entry stream and check that balance = grants - debits - expired

Exit status: 0 when verify finds the totals consistent, 1 when it does not, 2 on bad usage.`;

/** Runs `tollgate ledger ...` and returns the process exit code. */
export async function runLedgerCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      redis: { type: 'string', default: process.env.TOLLGATE_REDIS_URL },
      wallet: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [action] = positionals;
  if (values.help || (action !== 'state' && action !== 'verify')) {
    console.log(LEDGER_USAGE);
    return values.help ? 0 : 2;
  }
  if (!values.redis || !values.wallet || !values.wallet.includes('/')) {
    console.error(`missing or invalid option: give --redis URL (or TOLLGATE_REDIS_URL) and --wallet NAMESPACE/NAME\n\n${LEDGER_USAGE}`);
    return 2;
  }

  const [namespace = '', name = ''] = values.wallet.split('/');
  const wallet = { namespace, name };
  const ledger = new RedisLedger(values.redis);
  try {
    if (action === 'state') {
      const state = await ledger.state(wallet);
      console.log(
        [
          `wallet     ${values.wallet}${state.closed ? ' (closed)' : ''}`,
          `granted    ${formatAmount(state.granted, 9)}`,
          `spent      ${formatAmount(state.spent, 9)}`,
          `expired    ${formatAmount(state.expired, 9)}`,
          `reserved   ${formatAmount(state.reserved, 9)} in ${state.holds} holds`,
          `balance    ${formatAmount(state.balance, 9)}`,
          `available  ${formatAmount(state.available, 9)}`,
          `margin     ${formatAmount(state.spent - state.providerCost, 9)}`,
        ].join('\n'),
      );
      return 0;
    }

    const result = await ledger.verify(wallet);
    console.log(
      `replayed ${result.entries} entries: granted ${formatAmount(result.granted, 9)}, spent ${formatAmount(result.spent, 9)}, ` +
        `expired ${formatAmount(result.expired, 9)}`,
    );
    for (const problem of result.problems) console.log(`problem: ${problem}`);
    console.log(result.ok ? 'ok: balance = grants - debits - expired' : 'FAILED: the stored totals do not match the entry stream');
    return result.ok ? 0 : 1;
  } finally {
    await ledger.quit();
  }
}
