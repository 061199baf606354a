// Starts a real etcd and kube-apiserver on loopback ports for integration tests, the
// way controller-runtime's envtest does: no kubelet, no controller manager, no
// scheduler. Objects are stored and served, and admission webhooks are called, but
// nothing reconciles them (Deployments create no Pods, namespaces are never finalized).
//
// The binaries come from the directory in KUBEBUILDER_ASSETS, which
// scripts/install-test-binaries.sh fills and prints.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPair, randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { access, constants, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { stringify as stringifyYaml } from 'yaml';

const execFileAsync = promisify(execFile);

const INSTALL_SCRIPT = 'scripts/install-test-binaries.sh';
const CERTIFICATE_DAYS = 2;
const POLL_INTERVAL_MS = 200;
const STOP_TIMEOUT_MS = 10_000;
const LOG_TAIL_LINES = 40;

export interface ApiServer {
  /** Admin kubeconfig: a client certificate in group system:masters, so RBAC allows all. */
  kubeconfigPath: string;
  /** Base URL of the API server, `https://127.0.0.1:<port>`. */
  server: string;
  /** Stops kube-apiserver, then etcd, and removes the data directory. Safe to call twice. */
  stop(): Promise<void>;
}

export interface ApiServerOptions {
  /** Maximum time for etcd and kube-apiserver together to become ready, in milliseconds. */
  startTimeoutMs?: number;
}

/**
 * Returns the path of a binary in KUBEBUILDER_ASSETS (`kube-apiserver`, `etcd`,
 * `kubectl`, `helm`), or throws an error that names the install script.
 */
export async function findTestBinary(name: string): Promise<string> {
  const assetsDir = process.env['KUBEBUILDER_ASSETS'];
  if (assetsDir === undefined || assetsDir === '') {
    throw new Error(
      `KUBEBUILDER_ASSETS is not set, so the ${name} binary cannot be found. ` +
        `Run: export KUBEBUILDER_ASSETS="$(${INSTALL_SCRIPT} | tail -n 1)"`,
    );
  }

  const binaryPath = path.join(assetsDir, name);
  try {
    await access(binaryPath, constants.X_OK);
  } catch (error) {
    throw new Error(
      `${name} not found or not executable at ${binaryPath} (KUBEBUILDER_ASSETS=${assetsDir}). ` +
        `Run ${INSTALL_SCRIPT} and point KUBEBUILDER_ASSETS at the directory it prints.`,
      { cause: error },
    );
  }
  return binaryPath;
}

/** How often a start is tried again when a port found free was taken before etcd or kube-apiserver bound it. */
const PORT_ATTEMPTS = 3;

/**
 * Starts etcd and kube-apiserver and resolves once `/readyz` of the API server
 * returns 200. Ports are found free first and bound later, so another process
 * can take one in between; such a start is tried again on new ports.
 */
export async function startApiServer(options: ApiServerOptions = {}): Promise<ApiServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startApiServerOnce(options);
    } catch (error) {
      if (attempt >= PORT_ATTEMPTS || !/address already in use/.test((error as Error).message)) throw error;
    }
  }
}

async function startApiServerOnce(options: ApiServerOptions): Promise<ApiServer> {
  const deadline = Date.now() + (options.startTimeoutMs ?? 120_000);
  const etcdBinary = await findTestBinary('etcd');
  const apiServerBinary = await findTestBinary('kube-apiserver');

  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-apiserver-'));
  const processes: ManagedProcess[] = [];
  const killOnExit = (): void => {
    for (const managed of processes) {
      managed.child.kill('SIGKILL');
    }
  };
  process.on('exit', killOnExit);

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) {
      return;
    }
    stopped = true;

    // Stop in reverse start order, so that kube-apiserver never loses etcd while running.
    for (const managed of [...processes].reverse()) {
      await stopProcess(managed);
    }
    process.off('exit', killOnExit);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    const [etcdClientPort, etcdPeerPort, apiServerPort] = await findFreePorts(3);
    if (etcdClientPort === undefined || etcdPeerPort === undefined || apiServerPort === undefined) {
      throw new Error('findFreePorts returned fewer than 3 ports');
    }
    const files = await writeCertificates(dir);
    const server = `https://127.0.0.1:${apiServerPort}`;

    const etcd = startProcess('etcd', etcdBinary, etcdArguments(dir, etcdClientPort, etcdPeerPort), dir);
    processes.push(etcd);
    await waitUntil(etcd, deadline, () => isEtcdHealthy(etcdClientPort));

    const apiServer = startProcess(
      'kube-apiserver',
      apiServerBinary,
      apiServerArguments(files, apiServerPort, `http://127.0.0.1:${etcdClientPort}`),
      dir,
    );
    processes.push(apiServer);
    const credentials = await readCredentials(files);
    await waitUntil(apiServer, deadline, () => isApiServerReady(apiServerPort, credentials));

    const kubeconfigPath = path.join(dir, 'kubeconfig.yaml');
    await writeFile(kubeconfigPath, renderKubeconfig(server, credentials), { mode: 0o600 });
    return { kubeconfigPath, server, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

// Processes

interface ManagedProcess {
  name: string;
  child: ChildProcess;
  logPath: string;
  exited: Promise<void>;
}

function startProcess(name: string, binary: string, args: string[], dir: string): ManagedProcess {
  const logPath = path.join(dir, `${name}.log`);
  const logFd = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(binary, args, { cwd: dir, stdio: ['ignore', logFd, logFd] });
  } finally {
    closeSync(logFd);
  }

  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
  return { name, child, logPath, exited };
}

function hasExited(managed: ManagedProcess): boolean {
  return managed.child.exitCode !== null || managed.child.signalCode !== null;
}

async function stopProcess(managed: ManagedProcess): Promise<void> {
  if (managed.child.pid === undefined || hasExited(managed)) {
    return;
  }
  managed.child.kill('SIGTERM');
  const timer = setTimeout(() => managed.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await managed.exited;
  clearTimeout(timer);
}

/** Polls `isReady` until it returns true; fails early when the process exits. */
async function waitUntil(
  managed: ManagedProcess,
  deadline: number,
  isReady: () => Promise<boolean>,
): Promise<void> {
  for (;;) {
    if (hasExited(managed)) {
      const status = managed.child.exitCode ?? managed.child.signalCode;
      throw new Error(
        `${managed.name} exited during startup with status ${status}. ` +
          `Last lines of its log:\n${await readLogTail(managed.logPath)}`,
      );
    }
    if (await isReady()) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${managed.name} did not become ready before the start timeout. ` +
          `Last lines of its log:\n${await readLogTail(managed.logPath)}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

async function readLogTail(logPath: string): Promise<string> {
  const text = await readFile(logPath, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-LOG_TAIL_LINES).join('\n');
}

// Ports

/**
 * Returns distinct ports that were free a moment ago on 127.0.0.1.
 * NOTE: another process can take a port before etcd or kube-apiserver binds it. The
 * start then fails, and the error shows the bind failure in the log tail.
 */
async function findFreePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
      });
      const address = server.address();
      if (address === null || typeof address === 'string') {
        throw new Error(`unexpected listen address ${String(address)} for a TCP socket`);
      }
      ports.push(address.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  }
}

// Command lines

function etcdArguments(dir: string, clientPort: number, peerPort: number): string[] {
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  return [
    '--name=default',
    `--data-dir=${path.join(dir, 'etcd')}`,
    `--listen-client-urls=${clientUrl}`,
    `--advertise-client-urls=${clientUrl}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=default=${peerUrl}`,
    // Test data need not survive a crash, so etcd skips fsync to write faster.
    '--unsafe-no-fsync=true',
    '--log-level=warn',
  ];
}

function apiServerArguments(files: CertificateFiles, port: number, etcdUrl: string): string[] {
  return [
    '--bind-address=127.0.0.1',
    '--advertise-address=127.0.0.1',
    `--secure-port=${port}`,
    `--etcd-servers=${etcdUrl}`,
    `--tls-cert-file=${files.servingCert}`,
    `--tls-private-key-file=${files.servingKey}`,
    `--client-ca-file=${files.caCert}`,
    '--authorization-mode=RBAC',
    // A loopback range: the API server calls a Service's cluster IP for a webhook that names the
    // Service (as the chart's does), and such a call must fail on this machine, not leave it.
    '--service-cluster-ip-range=127.0.100.0/24',
    '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
    `--service-account-key-file=${files.serviceAccountPublicKey}`,
    `--service-account-signing-key-file=${files.serviceAccountPrivateKey}`,
    // Both webhook plugins are on by default, but naming them keeps the tests' dependency visible.
    '--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook',
    // ServiceAccount admission rejects Pods until a controller manager creates the
    // namespace's default ServiceAccount, and none runs here.
    '--disable-admission-plugins=ServiceAccount',
    // kube-apiserver rejects its own loopback address as an endpoint of the `kubernetes`
    // Service and logs that error on every sync, so the reconciler is off.
    '--endpoint-reconciler-type=none',
    '--allow-privileged=true',
    '--profiling=false',
  ];
}

// Certificates

interface CertificateFiles {
  caCert: string;
  servingCert: string;
  servingKey: string;
  adminCert: string;
  adminKey: string;
  serviceAccountPublicKey: string;
  serviceAccountPrivateKey: string;
}

interface Credentials {
  ca: string;
  cert: string;
  key: string;
}

interface KeyPairPem {
  privateKey: string;
  publicKey: string;
}

/** Writes a CA, the serving and admin certificates it signs, and the service account keys. */
async function writeCertificates(dir: string): Promise<CertificateFiles> {
  const file = (name: string): string => path.join(dir, name);
  const files: CertificateFiles = {
    caCert: file('ca.crt'),
    servingCert: file('apiserver.crt'),
    servingKey: file('apiserver.key'),
    adminCert: file('admin.crt'),
    adminKey: file('admin.key'),
    serviceAccountPublicKey: file('service-account.pub'),
    serviceAccountPrivateKey: file('service-account.key'),
  };

  const [caKeys, servingKeys, adminKeys, serviceAccountKeys] = await Promise.all([
    generateEcKeyPair(),
    generateEcKeyPair(),
    generateEcKeyPair(),
    generateRsaKeyPair(),
  ]);
  const caKey = file('ca.key');
  await writeFile(caKey, caKeys.privateKey, { mode: 0o600 });
  await writeFile(files.servingKey, servingKeys.privateKey, { mode: 0o600 });
  await writeFile(files.adminKey, adminKeys.privateKey, { mode: 0o600 });
  await writeFile(files.serviceAccountPrivateKey, serviceAccountKeys.privateKey, { mode: 0o600 });
  await writeFile(files.serviceAccountPublicKey, serviceAccountKeys.publicKey);

  await writeFile(
    file('ca.cnf'),
    opensslConfig(['CN = tollgate-test-ca'], [
      'basicConstraints = critical,CA:TRUE',
      'keyUsage = critical,keyCertSign,cRLSign',
      'subjectKeyIdentifier = hash',
    ]),
  );
  await openssl([
    'req', '-x509', '-new', '-sha256',
    '-config', file('ca.cnf'), '-extensions', 'extensions',
    '-key', caKey, '-days', String(CERTIFICATE_DAYS), '-out', files.caCert,
  ]);

  await signCertificate(dir, 'apiserver', files.servingKey, files.servingCert, ['CN = kube-apiserver'], [
    'extendedKeyUsage = serverAuth',
    'subjectAltName = IP:127.0.0.1,DNS:localhost',
  ]);
  // The API server maps the organization to a group, and system:masters passes every RBAC check.
  await signCertificate(dir, 'admin', files.adminKey, files.adminCert, [
    'O = system:masters',
    'CN = tollgate-test-admin',
  ], ['extendedKeyUsage = clientAuth']);
  return files;
}

async function signCertificate(
  dir: string,
  name: string,
  keyPath: string,
  certPath: string,
  subject: string[],
  extensions: string[],
): Promise<void> {
  const configPath = path.join(dir, `${name}.cnf`);
  const requestPath = path.join(dir, `${name}.csr`);
  await writeFile(
    configPath,
    opensslConfig(subject, [
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature',
      'authorityKeyIdentifier = keyid',
      ...extensions,
    ]),
  );

  await openssl(['req', '-new', '-config', configPath, '-key', keyPath, '-out', requestPath]);
  await openssl([
    'x509', '-req', '-sha256', '-in', requestPath,
    '-CA', path.join(dir, 'ca.crt'), '-CAkey', path.join(dir, 'ca.key'),
    '-set_serial', `0x${randomBytes(16).toString('hex')}`,
    '-days', String(CERTIFICATE_DAYS),
    '-extfile', configPath, '-extensions', 'extensions',
    '-out', certPath,
  ]);
}

function opensslConfig(subject: string[], extensions: string[]): string {
  return [
    '[req]',
    'prompt = no',
    'distinguished_name = subject',
    '[subject]',
    ...subject,
    '[extensions]',
    ...extensions,
    '',
  ].join('\n');
}

async function openssl(args: string[]): Promise<void> {
  try {
    await execFileAsync('openssl', args);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`openssl ${args.slice(0, 2).join(' ')} failed: ${stderr.trim()}`, { cause: error });
  }
}

async function generateEcKeyPair(): Promise<KeyPairPem> {
  return promisify(generateKeyPair)('ec', {
    namedCurve: 'prime256v1',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

async function generateRsaKeyPair(): Promise<KeyPairPem> {
  return promisify(generateKeyPair)('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

async function readCredentials(files: CertificateFiles): Promise<Credentials> {
  const [ca, cert, key] = await Promise.all([
    readFile(files.caCert, 'utf8'),
    readFile(files.adminCert, 'utf8'),
    readFile(files.adminKey, 'utf8'),
  ]);
  return { ca, cert, key };
}

function renderKubeconfig(server: string, credentials: Credentials): string {
  const base64 = (pem: string): string => Buffer.from(pem).toString('base64');
  return stringifyYaml({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      {
        name: 'tollgate-test',
        cluster: { server, 'certificate-authority-data': base64(credentials.ca) },
      },
    ],
    users: [
      {
        name: 'tollgate-test-admin',
        user: {
          'client-certificate-data': base64(credentials.cert),
          'client-key-data': base64(credentials.key),
        },
      },
    ],
    contexts: [
      {
        name: 'tollgate-test',
        context: { cluster: 'tollgate-test', user: 'tollgate-test-admin', namespace: 'default' },
      },
    ],
    'current-context': 'tollgate-test',
  });
}

// Readiness probes

function isEtcdHealthy(clientPort: number): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get({ host: '127.0.0.1', port: clientPort, path: '/health', timeout: 2_000, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(response.statusCode === 200 && body.includes('"health":"true"')));
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

function isApiServerReady(port: number, credentials: Credentials): Promise<boolean> {
  return new Promise((resolve) => {
    const request = https.get(
      { host: '127.0.0.1', port, path: '/readyz', timeout: 2_000, agent: false, ...credentials },
      (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode === 200));
      },
    );
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

/**
 * Runs the test kubectl against `apiServer` from the repository root, with
 * `input` on its standard input when given, and returns its standard output.
 */
export async function runKubectl(apiServer: ApiServer, args: string[], input?: string): Promise<string> {
  const child = execFileAsync(await findTestBinary('kubectl'), ['--kubeconfig', apiServer.kubeconfigPath, ...args], { cwd: path.join(import.meta.dirname, '..', '..') });
  if (input !== undefined) child.child.stdin!.end(input);
  return (await child).stdout;
}
