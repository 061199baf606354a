/**
 * Starts a real Redis Cluster for tests: one redis-server process per node
 * on free loopback ports, joined with `redis-cli --cluster create`, with no
 * replicas unless asked, and each node's files in its own temporary
 * directory.
 */

import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { findFreePorts, sleep, stopProcess, trackChild } from './processes.ts';
import type { RedisServerTls } from './redis.ts';

export interface StartRedisClusterOptions {
  /** Number of masters, at least 3 (the minimum `redis-cli --cluster create` accepts). */
  nodes: number;
  /** Number of replicas of each master (default 0). */
  replicas?: number;
  /** How long to wait for each step (node start, cluster create, `cluster_state:ok`), in milliseconds (default 20000). */
  timeoutMs?: number;
  /**
   * Also serves TLS on a further port of each node, and runs the cluster
   * bus over TLS (`tls-cluster yes`). Clients over TLS learn the nodes'
   * TLS ports from CLUSTER SLOTS, clients without TLS the plain ports,
   * which the start-up checks and `redis-cli --cluster create` use.
   */
  tls?: RedisServerTls;
}

export interface ClusterNodeAddress {
  host: string;
  port: number;
}

export interface RunningRedisCluster {
  /** The masters' client addresses, in the order they were started. */
  nodes: ClusterNodeAddress[];
  /** The replicas' client addresses, in the order they were started; empty without replicas. */
  replicas: ClusterNodeAddress[];
  /** The masters' TLS addresses, in the order of `nodes`; empty without `tls`. */
  tlsNodes: ClusterNodeAddress[];
  /** Stops every node (SIGTERM, then SIGKILL after 10 s) and deletes the temporary directories. Calling it twice is safe. */
  stop(): Promise<void>;
  /**
   * Stops the node on `port` (SIGTERM), keeping its directory. Without
   * persistence its keys are lost, but its nodes.conf keeps its slots.
   */
  stopNode(port: number): Promise<void>;
  /** Starts a node stopped by stopNode again, on the same ports and directory. */
  restartNode(port: number): Promise<void>;
  /** Resolves once every node reports `cluster_state:ok`, for example after restartNode. */
  waitUntilOk(): Promise<void>;
}

const HOST = '127.0.0.1';
const MIN_NODES = 3;
const PORT_ATTEMPTS = 5;
const OUTPUT_LIMIT = 4000;
const DEFAULT_TIMEOUT_MS = 20_000;
const INSTALL_HINT = 'Install both with `apt-get install redis-server`, which ships redis-server and redis-cli';

interface StartedNode {
  port: number;
  busPort: number;
  /** The TLS port, or undefined without TLS. */
  tlsPort: number | undefined;
  dir: string;
  child: ChildProcess;
}


/** Starts the nodes, creates the cluster and resolves once every node reports `cluster_state:ok`. */
export async function startRedisCluster(options: StartRedisClusterOptions): Promise<RunningRedisCluster> {
  if (!Number.isInteger(options.nodes) || options.nodes < MIN_NODES) {
    throw new RangeError(`invalid nodes ${options.nodes}: a Redis Cluster without replicas needs an integer of at least ${MIN_NODES} masters`);
  }
  const serverBinary = findBinary('redis-server', 'REDIS_SERVER_BIN');
  const cliBinary = findBinary('redis-cli', 'REDIS_CLI_BIN');
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const replicas = options.replicas ?? 0;
  if (!Number.isInteger(replicas) || replicas < 0) throw new RangeError(`invalid replicas ${replicas}: use a whole number of replicas per master`);

  const root = await mkdtemp(path.join(os.tmpdir(), 'tollgate-redis-cluster-'));
  const started: StartedNode[] = [];
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      await Promise.all(started.map((node) => stopProcess(node.child)));
      await rm(root, { recursive: true, force: true });
    })();
    return stopping;
  };

  try {
    for (let i = 0; i < options.nodes * (1 + replicas); i += 1) {
      started.push(await startNode(serverBinary, root, timeoutMs, options.tls));
    }
    const ports = started.map((node) => node.port);
    await createCluster(cliBinary, ports, replicas, timeoutMs);
    const waitUntilOk = async () => {
      await Promise.all(ports.map((port) => waitForClusterOk(port, timeoutMs)));
    };
    await waitUntilOk();
    // Nodes learn the replicas' roles by gossip, after the cluster is already ok.
    await Promise.all(ports.map((port) => waitForReplicas(port, options.nodes * replicas, timeoutMs)));

    const nodeOn = (port: number): StartedNode => {
      const node = started.find((each) => each.port === port);
      if (!node) throw new Error(`no node of this cluster listens on port ${port}; its ports are ${ports.join(', ')}`);
      return node;
    };
    const stopNode = (port: number) => stopProcess(nodeOn(port).child);
    const restartNode = async (port: number) => {
      const node = nodeOn(port);
      if (node.child.exitCode === null && node.child.signalCode === null) throw new Error(`the node on port ${port} is still running; stop it first`);
      node.child = await launch(serverBinary, node, timeoutMs, options.tls);
    };
    const masters = await masterPorts(ports[0]!);
    const masterNodes = started.filter((node) => masters.has(node.port));
    return {
      nodes: masterNodes.map((node) => ({ host: HOST, port: node.port })),
      tlsNodes: masterNodes.filter((node) => node.tlsPort !== undefined).map((node) => ({ host: HOST, port: node.tlsPort! })),
      replicas: ports.filter((port) => !masters.has(port)).map((port) => ({ host: HOST, port })),
      stop,
      stopNode,
      restartNode,
      waitUntilOk,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

function findBinary(name: string, envVariable: string): string {
  const candidates = [
    process.env[envVariable],
    ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((entry) => path.join(entry, name)),
    path.join('/usr/bin', name),
  ];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not executable here, so try the next candidate.
    }
  }
  throw new Error(
    `${name} is not installed: it was not found on PATH, in ${envVariable} or at /usr/bin/${name}, ` +
      `and the Redis Cluster tests need both redis-server and redis-cli. ${INSTALL_HINT}, or set ${envVariable} to its path.`,
  );
}

/** Starts one cluster-enabled node, retrying with new ports when another process took a probed one. */
async function startNode(binary: string, root: string, timeoutMs: number, tls: RedisServerTls | undefined): Promise<StartedNode> {
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt += 1) {
    // The cluster bus needs a second port. Setting it with `--cluster-port` avoids
    // the default of port + 10000, which another process may use or which may exceed 65535.
    const [port, busPort, tlsPort] = await findFreePorts(tls === undefined ? 2 : 3);
    const dir = path.join(root, `node-${port}`);
    await mkdir(dir);
    try {
      const ports = { port: port!, busPort: busPort!, tlsPort, dir };
      const child = await launch(binary, ports, timeoutMs, tls);
      return { ...ports, child };
    } catch (error) {
      lastError = error as Error;
      await rm(dir, { recursive: true, force: true });
      if (!/Address already in use/i.test(lastError.message)) break;
    }
  }
  throw lastError ?? new Error('redis-server did not start');
}


async function launch(
  binary: string,
  { port, busPort, tlsPort, dir }: Omit<StartedNode, 'child'>,
  timeoutMs: number,
  tls: RedisServerTls | undefined,
): Promise<ChildProcess> {
  const args = [
    '--port', String(port),
    '--bind', HOST,
    '--dir', dir,
    '--cluster-enabled', 'yes',
    '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
    '--cluster-port', String(busPort),
    '--cluster-node-timeout', '2000',
    '--save', '',
    '--appendonly', 'no',
    '--daemonize', 'no',
    '--logfile', '',
    ...(tls === undefined || tlsPort === undefined
      ? []
      : [
          '--tls-port', String(tlsPort),
          '--tls-cluster', 'yes',
          '--tls-cert-file', tls.certFile,
          '--tls-key-file', tls.keyFile,
          '--tls-ca-cert-file', tls.caFile,
          '--tls-auth-clients', tls.authClients === false ? 'no' : 'yes',
        ]),
  ];
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);

  let output = '';
  const collect = (chunk: Buffer) => {
    if (output.length < OUTPUT_LIMIT) output += chunk.toString('utf8');
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);

  let exited: string | undefined;
  child.once('exit', (code, signal) => {
    exited = `exited with ${signal ?? `code ${code}`}`;
  });
  child.once('error', (error) => {
    exited = `failed to start: ${error.message}`;
  });

  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`redis-server on port ${port} ${exited}. Its output:\n${output.trim()}`);
    if (await answersPing(port)) return child;
    await sleep(25);
  }

  await stopProcess(child);
  throw new Error(`redis-server on port ${port} did not answer PING within ${timeoutMs} ms. Its output:\n${output.trim()}`);
}

/** Sends one PING over a raw connection and returns whether the reply was PONG. */
function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port });
    let reply = '';
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.once('error', () => finish(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) finish(reply.startsWith('+PONG'));
    });
  });
}

/** Runs `redis-cli --cluster create`, which assigns the slots evenly, joins the nodes and picks which ones replicate. */
function createCluster(cliBinary: string, ports: number[], replicas: number, timeoutMs: number): Promise<void> {
  const args = ['--cluster', 'create', ...ports.map((port) => `${HOST}:${port}`), '--cluster-replicas', String(replicas), '--cluster-yes'];
  return new Promise((resolve, reject) => {
    execFile(cliBinary, args, { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (error, stdout, stderr) => {
      if (!error) {
        resolve();
        return;
      }
      const reason = error.killed ? `timed out after ${timeoutMs} ms` : `failed (${error.message.split('\n')[0]})`;
      reject(new Error(`redis-cli ${args.join(' ')} ${reason}. Its output:\n${`${stdout}\n${stderr}`.trim().slice(-OUTPUT_LIMIT)}`));
    });
  });
}

/** Returns the ports of the masters, from CLUSTER NODES on the node at `port`. */
async function masterPorts(port: number): Promise<Set<number>> {
  const client = new Redis({ host: HOST, port, maxRetriesPerRequest: 0, retryStrategy: () => null });
  try {
    const lines = ((await client.cluster('NODES')) as string).trim().split('\n');
    // Each line is "<id> <ip>:<port>@<bus port> <flags> ...", and the flags of a master include "master".
    const masters = lines.filter((line) => line.split(' ')[2]!.split(',').includes('master'));
    return new Set(masters.map((line) => Number(/:(\d+)@/.exec(line)![1])));
  } finally {
    client.disconnect();
  }
}

/**
 * Polls the node at `port` until its CLUSTER NODES lists `count` replicas
 * and, when it is a replica itself, its link to its master is up.
 */
async function waitForReplicas(port: number, count: number, timeoutMs: number): Promise<void> {
  const client = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let lastNodes = '';
  try {
    await client.connect();
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      lastNodes = (await client.cluster('NODES')) as string;
      const flags = lastNodes.trim().split('\n').map((line) => line.split(' ')[2]!.split(','));
      const replicas = flags.filter((each) => each.includes('slave')).length;
      const isReplica = flags.some((each) => each.includes('myself') && each.includes('slave'));
      const linkUp = !isReplica || /^master_link_status:up\r?$/m.test(await client.info('replication'));
      if (replicas === count && linkUp) return;
      await sleep(50);
    }
  } finally {
    client.disconnect();
  }
  throw new Error(`Redis Cluster node ${HOST}:${port} did not list ${count} replicas with their links up within ${timeoutMs} ms. Its CLUSTER NODES:\n${lastNodes.trim()}`);
}

/** Polls CLUSTER INFO on one node until it reports `cluster_state:ok`. */
async function waitForClusterOk(port: number, timeoutMs: number): Promise<void> {
  const client = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let lastInfo = '';
  try {
    await client.connect();
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      lastInfo = await client.cluster('INFO');
      if (/^cluster_state:ok\r?$/m.test(lastInfo)) return;
      await sleep(50);
    }
  } finally {
    client.disconnect();
  }
  throw new Error(`Redis Cluster node ${HOST}:${port} did not report cluster_state:ok within ${timeoutMs} ms. Its CLUSTER INFO:\n${lastInfo.trim()}`);
}



