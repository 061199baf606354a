import { describe, expect, it } from 'vitest';

import { describeCluster, parseRedisUrl, redactUrl } from './redis-connect.ts';

describe('parseRedisUrl for one server', () => {
  it('passes server URLs on unchanged', () => {
    const urls = [
      'redis://127.0.0.1:6379',
      'rediss://user:p%40ss@redis.example.com:6380/2?family=6',
      'localhost:6379',
      '6379',
      '/var/run/redis/redis.sock?db=1',
      '//127.0.0.1:6379',
    ];
    for (const url of urls) {
      expect(parseRedisUrl(url), url).toEqual({ kind: 'server', url });
    }
  });

  it('writes the scheme of server URLs in lower case', () => {
    // ioredis turns TLS on only for a lower-case "rediss://".
    expect(parseRedisUrl('REDISS://Redis.Example.com:6380/0')).toEqual({ kind: 'server', url: 'rediss://Redis.Example.com:6380/0' });
    expect(parseRedisUrl('REDIS://localhost')).toEqual({ kind: 'server', url: 'redis://localhost' });
  });

  it('rejects an unknown scheme', () => {
    expect(() => parseRedisUrl('redis-cluster://redis-0.redis:6379')).toThrow(
      new RangeError(
        'invalid Redis URL "redis-cluster://redis-0.redis:6379": unknown scheme "redis-cluster://"; ' +
          'use redis:// or rediss:// for one Redis server, or redis+cluster:// or rediss+cluster:// for a Redis Cluster',
      ),
    );
    expect(() => parseRedisUrl('http://user:hunter2@127.0.0.1:6379')).toThrow(
      new RangeError(
        'invalid Redis URL "http://user:***@127.0.0.1:6379": unknown scheme "http://"; ' +
          'use redis:// or rediss:// for one Redis server, or redis+cluster:// or rediss+cluster:// for a Redis Cluster',
      ),
    );
  });

  it('rejects a cluster scheme without slashes', () => {
    expect(() => parseRedisUrl('redis+cluster:redis-0.redis:6379')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster:redis-0.redis:6379": the scheme "redis+cluster:" must be followed by "//"; ' +
          'write the URL as redis+cluster://redis-0.redis:6379',
      ),
    );
  });
});

describe('parseRedisUrl for a Redis Cluster', () => {
  it('parses one seed without credentials', () => {
    expect(parseRedisUrl('redis+cluster://redis-0.redis')).toEqual({
      kind: 'cluster',
      seeds: [{ host: 'redis-0.redis', port: 6379 }],
      username: undefined,
      password: undefined,
      tls: false,
    });
  });

  it('parses user, password and port', () => {
    expect(parseRedisUrl('redis+cluster://user:pass@redis-0.redis:7000')).toEqual({
      kind: 'cluster',
      seeds: [{ host: 'redis-0.redis', port: 7000 }],
      username: 'user',
      password: 'pass',
      tls: false,
    });
  });

  it('parses TLS, database 0 and further seeds', () => {
    expect(parseRedisUrl('rediss+cluster://:p%40ss%2Fw0rd@10.0.0.5:7000/0?node=10.0.0.6:7001&node=redis-2.redis')).toEqual({
      kind: 'cluster',
      seeds: [
        { host: '10.0.0.5', port: 7000 },
        { host: '10.0.0.6', port: 7001 },
        { host: 'redis-2.redis', port: 6379 },
      ],
      username: undefined,
      password: 'p@ss/w0rd',
      tls: true,
    });
  });

  it('parses IPv6 seeds', () => {
    expect(parseRedisUrl('redis+cluster://[::1]:7000/?node=[fe80::1]')).toEqual({
      kind: 'cluster',
      seeds: [
        { host: '::1', port: 7000 },
        { host: 'fe80::1', port: 6379 },
      ],
      username: undefined,
      password: undefined,
      tls: false,
    });
  });

  it('parses a user without a password', () => {
    const target = parseRedisUrl('redis+cluster://ledger@127.0.0.1:7000');
    expect(target).toEqual({ kind: 'cluster', seeds: [{ host: '127.0.0.1', port: 7000 }], username: 'ledger', password: undefined, tls: false });
  });

  it('keeps unencoded delimiters in a password', () => {
    const target = parseRedisUrl('redis+cluster://:ab/c?d#e@127.0.0.1:7000');
    expect(target).toEqual({ kind: 'cluster', seeds: [{ host: '127.0.0.1', port: 7000 }], username: undefined, password: 'ab/c?d#e', tls: false });
  });

  it('accepts the scheme in upper case', () => {
    expect(parseRedisUrl('REDISS+CLUSTER://h:1')).toEqual({ kind: 'cluster', seeds: [{ host: 'h', port: 1 }], username: undefined, password: undefined, tls: true });
  });

  it('rejects a database other than 0', () => {
    expect(() => parseRedisUrl('redis+cluster://user:secret@redis-0.redis:6379/2')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://user:***@redis-0.redis:6379/2": database 2 is not available, ' +
          'because a Redis Cluster has only database 0; remove "/2" from the URL',
      ),
    );
  });

  it('rejects a path that is no database', () => {
    expect(() => parseRedisUrl('redis+cluster://redis-0.redis:6379/ledger')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://redis-0.redis:6379/ledger": invalid path "/ledger": ' +
          'a Redis Cluster URL has no path, or "/0" for its only database; remove "/ledger" from the URL',
      ),
    );
  });

  it('rejects an unknown query parameter', () => {
    expect(() => parseRedisUrl('redis+cluster://redis-0.redis:6379?node=redis-1.redis:6379&password=hunter2')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://redis-0.redis:6379?node=redis-1.redis:6379&password=***": ' +
          'unknown query parameter "password"; the only parameter of a Redis Cluster URL is node=HOST:PORT, ' +
          'repeated for each further seed node, and other connection settings are not taken from the URL',
      ),
    );
  });

  it('rejects a missing host', () => {
    const cases = [
      ['redis+cluster://:6379', 'redis+cluster://:6379'],
      ['redis+cluster://', 'redis+cluster://'],
      ['redis+cluster://user:secret@/0', 'redis+cluster://user:***@/0'],
    ];
    for (const [url, shown] of cases) {
      expect(() => parseRedisUrl(url!), url).toThrow(
        new RangeError(
          `invalid Redis URL "${shown}": missing host in the URL; name a seed node as HOST:PORT, as in redis+cluster://redis-0.redis:6379`,
        ),
      );
    }
  });

  it('rejects a bad port', () => {
    for (const port of ['0', '65536', '99999', 'http', '', '6379:1', '-1', '007000']) {
      expect(() => parseRedisUrl(`redis+cluster://redis-0.redis:${port}`), port).toThrow(
        new RangeError(
          `invalid Redis URL "redis+cluster://redis-0.redis:${port}": invalid port "${port}" in the URL; use a whole number from 1 to 65535, such as 6379`,
        ),
      );
    }
  });

  it('rejects a bad host', () => {
    expect(() => parseRedisUrl('redis+cluster://redis 0:6379')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://redis 0:6379": invalid host "redis 0" in the URL; ' +
          'use a host name, an IPv4 address or an IPv6 address in brackets, such as [::1]',
      ),
    );
    expect(() => parseRedisUrl('redis+cluster://[::1')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://[::1": invalid host "[" in the URL; ' +
          'use a host name, an IPv4 address or an IPv6 address in brackets, such as [::1]',
      ),
    );
  });

  it('rejects a bad node parameter', () => {
    expect(() => parseRedisUrl('redis+cluster://redis-0.redis?node=')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://redis-0.redis?node=": missing host in node=; name a seed node as HOST:PORT, as in redis+cluster://redis-0.redis:6379',
      ),
    );
    expect(() => parseRedisUrl('redis+cluster://redis-0.redis?node=redis-1.redis:70000')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://redis-0.redis?node=redis-1.redis:70000": ' +
          'invalid port "70000" in node=redis-1.redis:70000; use a whole number from 1 to 65535, such as 6379',
      ),
    );
  });

  it('rejects a fragment', () => {
    expect(() => parseRedisUrl('redis+cluster://redis-0.redis:6379#main')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://redis-0.redis:6379#main": unexpected fragment "#main"; remove it from the URL',
      ),
    );
  });

  it('rejects bad percent-encoding in the password', () => {
    expect(() => parseRedisUrl('redis+cluster://user:100%@redis-0.redis')).toThrow(
      new RangeError(
        'invalid Redis URL "redis+cluster://user:***@redis-0.redis": invalid percent-encoding in the user name or password; write a "%" in them as %25',
      ),
    );
  });
});

describe('describeCluster', () => {
  it('names one seed', () => {
    expect(describeCluster([{ host: '10.0.0.5', port: 6379 }])).toBe('the Redis Cluster at seed 10.0.0.5:6379');
  });

  it('names several seeds', () => {
    const seeds = [
      { host: 'redis-0.redis', port: 6379 },
      { host: 'redis-1.redis', port: 6380 },
    ];
    expect(describeCluster(seeds)).toBe('the Redis Cluster at seeds redis-0.redis:6379, redis-1.redis:6380');
  });
});

describe('redactUrl', () => {
  it('hides the password', () => {
    expect(redactUrl('redis://user:hunter2@127.0.0.1:6379/0')).toBe('redis://user:***@127.0.0.1:6379/0');
    expect(redactUrl('redis+cluster://:a/b@c@127.0.0.1:6379')).toBe('redis+cluster://:***@127.0.0.1:6379');
  });

  it('keeps a user without a password', () => {
    expect(redactUrl('redis://ledger@127.0.0.1:6379')).toBe('redis://ledger@127.0.0.1:6379');
  });

  it('hides query values other than node', () => {
    expect(redactUrl('redis+cluster://h:1?node=h:2&password=x&tls')).toBe('redis+cluster://h:1?node=h:2&password=***&tls');
  });

  it('leaves a URL without scheme unchanged', () => {
    expect(redactUrl('localhost:6379')).toBe('localhost:6379');
  });
});
