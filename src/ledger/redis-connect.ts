/**
 * Ledger URLs and the ioredis clients they open. One URL selects either a
 * single Redis server or a Redis Cluster, so that the URL stays the only
 * setting that Secrets, the Helm chart and the injector carry:
 *
 * - `redis://` and `rediss://` (TLS): one server. ioredis parses the URL, as
 *   it always did; this module passes it on with the scheme in lower case.
 * - `redis+cluster://` and `rediss+cluster://` (TLS): a Redis Cluster. The
 *   authority names one seed node, as in
 *   `redis+cluster://user:pass@redis-0.redis:6379`, and repeated
 *   `node=HOST:PORT` query parameters name further seeds. ioredis finds the
 *   other masters with CLUSTER SLOTS.
 */

import { Cluster, Redis } from 'ioredis';
import type { ClusterOptions, RedisOptions } from 'ioredis';

/** The port of a seed that names none. */
export const DEFAULT_REDIS_PORT = 6379;

/** Delay before the first attempt to reconnect a lost cluster. Each failed attempt adds as much, up to MAX_RECONNECT_DELAY_MS. */
const RECONNECT_DELAY_STEP_MS = 50;
const MAX_RECONNECT_DELAY_MS = 2000;

/** The error a Cluster client emits when a node's CLUSTER INFO did not report `cluster_state:ok` after a connection. */
export const READY_CHECK_FAILED = 'the cluster is not ready: a node did not report cluster_state:ok in CLUSTER INFO';

const SERVER_SCHEMES = new Set(['redis', 'rediss']);
const CLUSTER_SCHEMES = new Set(['redis+cluster', 'rediss+cluster']);
const SCHEME_ADVICE = 'use redis:// or rediss:// for one Redis server, or redis+cluster:// or rediss+cluster:// for a Redis Cluster';
const CLUSTER_EXAMPLE = 'redis+cluster://redis-0.redis:6379';

/** A host name, an IPv4 address, or an IPv6 address in brackets. */
const HOST_PATTERN = /^([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])$/;

/** One node of a Redis Cluster that the client asks for the cluster's layout. */
export interface ClusterSeed {
  host: string;
  port: number;
}

/** A ledger URL for one Redis server. */
export interface RedisServerTarget {
  kind: 'server';
  /** The URL as given, for ioredis to parse. */
  url: string;
}

/** A ledger URL for a Redis Cluster. */
export interface RedisClusterTarget {
  kind: 'cluster';
  /** The seed in the URL's authority first, then those of the `node` parameters, in order. */
  seeds: ClusterSeed[];
  /** The ACL user name, percent-decoded; undefined when the URL has none. */
  username: string | undefined;
  /** The password, percent-decoded; undefined when the URL has none. */
  password: string | undefined;
  /** Whether every node connection uses TLS (`rediss+cluster://`). */
  tls: boolean;
}

export type RedisTarget = RedisServerTarget | RedisClusterTarget;

/** An ioredis client opened from a ledger URL. */
export interface OpenedRedis {
  client: Redis | Cluster;
  /** The target for error messages and logs, without credentials, such as "the Redis Cluster at seed 10.0.0.5:6379"; undefined for one server. */
  address: string | undefined;
}

/**
 * Parses a ledger URL. A Redis Cluster URL is checked completely. A URL with
 * the scheme redis:// or rediss://, or with none, is returned for ioredis to
 * parse, with its scheme in lower case. Throws a RangeError for an invalid cluster URL or an
 * unknown scheme, whose message shows the URL without its password and the fix.
 */
export function parseRedisUrl(text: string): RedisTarget {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text)?.[1]?.toLowerCase();
  if (scheme !== undefined && CLUSTER_SCHEMES.has(scheme)) return parseClusterUrl(text, scheme);
  if (scheme !== undefined && !SERVER_SCHEMES.has(scheme)) throw invalidUrl(text, `unknown scheme "${scheme}://"; ${SCHEME_ADVICE}`);

  const clusterWithoutSlashes = /^(rediss?\+cluster):(?!\/\/)/i.exec(text);
  if (clusterWithoutSlashes) {
    throw invalidUrl(text, `the scheme "${clusterWithoutSlashes[1]}:" must be followed by "//"; write the URL as ${CLUSTER_EXAMPLE}`);
  }
  // ioredis turns TLS on only for a scheme written "rediss://" in lower case, and would connect "REDISS://" without it.
  return { kind: 'server', url: scheme === undefined ? text : `${scheme}${text.slice(scheme.length)}` };
}

/**
 * Opens the client for a ledger URL. `redisOptions` apply to the one server,
 * or to every node connection of a cluster, and win over settings from the
 * URL. A cluster client keeps its queued commands only until one connection
 * attempt fails (see openCluster).
 */
export function openRedisClient(url: string, redisOptions: RedisOptions = {}): OpenedRedis {
  const target = parseRedisUrl(url);
  if (target.kind === 'server') return { client: new Redis(target.url, redisOptions), address: undefined };
  return { client: openCluster(target, redisOptions), address: describeCluster(target.seeds) };
}

/** Names a cluster by its seeds for messages, such as "the Redis Cluster at seeds a:6379, b:6379". */
export function describeCluster(seeds: readonly ClusterSeed[]): string {
  const list = seeds.map((seed) => `${seed.host}:${seed.port}`).join(', ');
  return `the Redis Cluster at ${seeds.length === 1 ? 'seed' : 'seeds'} ${list}`;
}

/**
 * Opens a Cluster client that fails commands while the cluster is lost,
 * like the one-server client with `maxRetriesPerRequest: 1`, instead of
 * holding them until it comes back. ioredis's default keeps reconnecting and
 * keeps every command issued meanwhile in its offline queue without a limit,
 * and sends them all once it reconnects, long after their callers gave up.
 * Here the retry strategy ends each failed connection attempt, which makes
 * ioredis reject the queued commands with "None of startup nodes is
 * available", and schedules the next attempt itself. Commands issued
 * between two attempts fail at once.
 */
function openCluster(target: RedisClusterTarget, redisOptions: RedisOptions): Cluster {
  let attempts = 0;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let closedByCaller = false;
  /** Whether the current connection attempt got the slots but is not ready yet. */
  let connected = false;

  const scheduleReconnect = () => {
    if (closedByCaller || reconnectTimer !== undefined) return;
    attempts += 1;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      if (closedByCaller || cluster.status === 'connecting' || cluster.status === 'connect' || cluster.status === 'ready') return;
      // A failed attempt reaches the 'error' listeners and the retry strategy again.
      cluster.connect().catch(() => {});
    }, Math.min(attempts * RECONNECT_DELAY_STEP_MS, MAX_RECONNECT_DELAY_MS));
    reconnectTimer.unref();
  };

  const options: ClusterOptions = {
    redisOptions: {
      ...(target.username === undefined ? {} : { username: target.username }),
      ...(target.password === undefined ? {} : { password: target.password }),
      ...(target.tls ? { tls: {} } : {}),
      ...redisOptions,
    },
    // ioredis calls the strategy for each loss that quit() or disconnect() did not cause, including a failed
    // ready check after a connection. It passes a reason only when it could not resolve the seeds' host names.
    // It emits neither that error nor a failed ready check, so the strategy does.
    clusterRetryStrategy: (_attempts, reason) => {
      const failure = reason ?? (connected ? new Error(READY_CHECK_FAILED) : undefined);
      connected = false;
      if (failure !== undefined && cluster.listenerCount('error') > 0) cluster.emit('error', failure);
      scheduleReconnect();
      return null;
    },
  };
  if (target.tls) {
    // ioredis resolves seed host names to addresses before it connects, which would make TLS check the
    // server's certificate against an address. Keeping the name checks the certificate against the URL's host.
    options.dnsLookup = (address, callback) => callback(null, address);
  }

  const cluster = new Cluster(target.seeds, options);
  // ioredis asks a node for CLUSTER SLOTS on a copy of its connection, drops that copy's errors and reports only
  // "Connection is closed.". The copy's own error, such as an untrusted TLS certificate, goes on as a 'node error'.
  // Nodes join the pool after construction, once the seeds' host names are resolved, so this listener sees every one.
  cluster.on('+node', (node: Redis) => {
    // The key by which ioredis names the node in its own 'node error' events.
    const key = `${node.options.host}:${node.options.port}`;
    const duplicate = node.duplicate.bind(node);
    node.duplicate = ((...args: Parameters<Redis['duplicate']>) => {
      const copy = duplicate(...args);
      copy.on('error', (error: Error) => cluster.emit('node error', error, key));
      return copy;
    }) as Redis['duplicate'];
  });
  cluster.on('connect', () => {
    connected = true;
  });
  cluster.on('ready', () => {
    connected = false;
    attempts = 0;
  });

  // A caller's quit() or disconnect() stops the reconnection for good. ioredis's own disconnect(true), after a
  // failed ready check, is a loss like any other.
  const close = () => {
    closedByCaller = true;
    clearTimeout(reconnectTimer);
    reconnectTimer = undefined;
  };
  const quit = cluster.quit.bind(cluster);
  const disconnect = cluster.disconnect.bind(cluster);
  cluster.quit = ((...args: Parameters<Cluster['quit']>) => {
    close();
    return quit(...args);
  }) as Cluster['quit'];
  cluster.disconnect = (reconnect = false) => {
    if (!reconnect) close();
    disconnect(reconnect);
  };
  return cluster;
}

function parseClusterUrl(text: string, scheme: string): RedisClusterTarget {
  const rest = text.slice(scheme.length + '://'.length);

  // The user information ends at the last '@', so that a password with an unencoded '/', '?' or '#' still parses.
  const at = rest.lastIndexOf('@');
  const userInfo = at === -1 ? undefined : rest.slice(0, at);
  const afterUserInfo = rest.slice(at + 1);

  const authorityEnd = afterUserInfo.search(/[/?#]/);
  const authority = authorityEnd === -1 ? afterUserInfo : afterUserInfo.slice(0, authorityEnd);
  const tail = authorityEnd === -1 ? '' : afterUserInfo.slice(authorityEnd);

  const hash = tail.indexOf('#');
  if (hash !== -1) throw invalidUrl(text, `unexpected fragment "${tail.slice(hash)}"; remove it from the URL`);
  const question = tail.indexOf('?');
  const path = question === -1 ? tail : tail.slice(0, question);
  const query = question === -1 ? '' : tail.slice(question + 1);

  checkDatabase(text, path);
  const seeds = [parseSeed(text, authority, 'the URL')];
  seeds.push(...parseNodeParameters(text, query));
  const { username, password } = parseUserInfo(text, userInfo);
  return { kind: 'cluster', seeds, username, password, tls: scheme === 'rediss+cluster' };
}

/** Accepts no path, "/" and "/0"; a Redis Cluster has only database 0. */
function checkDatabase(text: string, path: string): void {
  if (path === '' || path === '/' || path === '/0') return;
  const database = path.slice(1);
  if (/^\d+$/.test(database)) {
    throw invalidUrl(text, `database ${database} is not available, because a Redis Cluster has only database 0; remove "${path}" from the URL`);
  }
  throw invalidUrl(text, `invalid path "${path}": a Redis Cluster URL has no path, or "/0" for its only database; remove "${path}" from the URL`);
}

/** Parses the query string, whose only parameter is a repeatable `node=HOST:PORT`. */
function parseNodeParameters(text: string, query: string): ClusterSeed[] {
  const seeds: ClusterSeed[] = [];
  for (const [name, value] of new URLSearchParams(query)) {
    if (name !== 'node') {
      throw invalidUrl(
        text,
        `unknown query parameter "${name}"; the only parameter of a Redis Cluster URL is node=HOST:PORT, ` +
          'repeated for each further seed node, and other connection settings are not taken from the URL',
      );
    }
    seeds.push(parseSeed(text, value, `node=${value}`));
  }
  return seeds;
}

/** Parses HOST, HOST:PORT, [IPV6] or [IPV6]:PORT; `where` names the part of the URL for errors. */
function parseSeed(text: string, hostPort: string, where: string): ClusterSeed {
  const match = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(hostPort);
  const host = match?.[1] ?? '';
  const portText = match?.[2];

  if (host === '') {
    throw invalidUrl(text, `missing host in ${where}; name a seed node as HOST:PORT, as in ${CLUSTER_EXAMPLE}`);
  }
  if (match === null || !HOST_PATTERN.test(host)) {
    throw invalidUrl(text, `invalid host "${match === null ? hostPort : host}" in ${where}; use a host name, an IPv4 address or an IPv6 address in brackets, such as [::1]`);
  }
  if (portText === undefined) return { host: unbracket(host), port: DEFAULT_REDIS_PORT };

  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw invalidUrl(text, `invalid port "${portText}" in ${where}; use a whole number from 1 to 65535, such as ${DEFAULT_REDIS_PORT}`);
  }
  return { host: unbracket(host), port };
}

function unbracket(host: string): string {
  return host.startsWith('[') ? host.slice(1, -1) : host;
}

function parseUserInfo(text: string, userInfo: string | undefined): { username: string | undefined; password: string | undefined } {
  if (userInfo === undefined) return { username: undefined, password: undefined };
  const colon = userInfo.indexOf(':');
  const encodedUser = colon === -1 ? userInfo : userInfo.slice(0, colon);
  const encodedPassword = colon === -1 ? undefined : userInfo.slice(colon + 1);
  try {
    const username = decodeURIComponent(encodedUser);
    const password = encodedPassword === undefined ? undefined : decodeURIComponent(encodedPassword);
    return { username: username === '' ? undefined : username, password: password === '' ? undefined : password };
  } catch (error) {
    throw invalidUrl(text, 'invalid percent-encoding in the user name or password; write a "%" in them as %25', { cause: error });
  }
}

function invalidUrl(text: string, problem: string, options?: ErrorOptions): RangeError {
  return new RangeError(`invalid Redis URL "${redactUrl(text)}": ${problem}`, options);
}

/**
 * Returns the URL for messages, with "***" in place of its password and of
 * the value of every query parameter other than `node`, which may hold a
 * secret too. The user information ends at the last '@', as in
 * parseClusterUrl, so a password that is not percent-encoded is hidden too.
 */
export function redactUrl(text: string): string {
  const start = text.indexOf('://');
  if (start === -1) return text;
  const authorityStart = start + '://'.length;
  const at = text.lastIndexOf('@');

  let redacted = text;
  const colon = text.indexOf(':', authorityStart);
  if (at >= authorityStart && colon !== -1 && colon < at) redacted = `${text.slice(0, colon + 1)}***${text.slice(at)}`;

  const question = redacted.indexOf('?', redacted.lastIndexOf('@') + 1);
  if (question === -1) return redacted;
  const parameters = redacted
    .slice(question + 1)
    .split('&')
    .map((parameter) => {
      const equals = parameter.indexOf('=');
      return equals === -1 || parameter.slice(0, equals) === 'node' ? parameter : `${parameter.slice(0, equals)}=***`;
    });
  return `${redacted.slice(0, question + 1)}${parameters.join('&')}`;
}
