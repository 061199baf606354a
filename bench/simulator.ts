/**
 * Runs the provider simulator as its own process, so that the benchmark's
 * upstream does not share an event loop with the load generator or a proxy.
 *
 *   node bench/simulator.ts --port 0 --key sk-bench-upstream
 *
 * Prints one line, `simulator listening on <url>`, once it accepts requests,
 * and stops on SIGTERM or SIGINT.
 */
import { parseArgs } from 'node:util';
import { startSimulator } from '../src/simulator/index.ts';

const USAGE = `Usage: node bench/simulator.ts [--host HOST] [--port PORT] [--key KEY]

  --host HOST   address to listen on (default 127.0.0.1)
  --port PORT   port to listen on; 0 picks a free one (default 0)
  --key KEY     the only credential the simulator accepts (default: any non-empty one)`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      key: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid --port "${values.port}": use a whole number from 0 to 65535`);
    process.exitCode = 2;
    return;
  }

  const simulator = await startSimulator({ host: values.host, port, expectedKey: values.key });
  console.log(`simulator listening on ${simulator.url}`);

  const stop = () => {
    simulator.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error('simulator failed to close:', error);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

await main();
