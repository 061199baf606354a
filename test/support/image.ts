/**
 * Lays out the project's container image without a container runtime: reads
 * the Dockerfile, copies what its COPY lines copy, runs its `npm ci` line, and
 * returns the user, working directory and command that it declares. Tests then
 * run the image's processes from that folder as the image's user. So a
 * runtime import of a dev dependency, a source folder the image leaves out, or
 * a write to the read-only root file system fails a test instead of a pod.
 */
import { execFile } from 'node:child_process';
import { chmod, copyFile, cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = path.join(import.meta.dirname, '..', '..');

export interface StagedImage {
  /** Temporary folder used as the image's root file system. */
  root: string;
  /** The WORKDIR, inside `root`. */
  workdir: string;
  /** The image's Node.js binary, copied into `root` so that the image's user can run it. */
  node: string;
  /** User and group ids from the USER line. */
  uid: number;
  gid: number;
  /** Major version of the FROM line's node image, such as 24. */
  nodeMajor: number;
  /** ENTRYPOINT and CMD as JSON arrays, with `node` as the first word of ENTRYPOINT. */
  entrypoint: string[];
  cmd: string[];
  remove(): Promise<void>;
}

interface Instruction {
  keyword: string;
  args: string;
}

function instructions(dockerfile: string): Instruction[] {
  const result: Instruction[] = [];
  for (const line of dockerfile.replace(/\\\n/g, ' ').split('\n')) {
    const text = line.trim();
    if (text === '' || text.startsWith('#')) continue;
    const space = text.indexOf(' ');
    result.push({ keyword: text.slice(0, space).toUpperCase(), args: text.slice(space + 1).trim() });
  }
  return result;
}

function jsonArray(instruction: Instruction): string[] {
  const value: unknown = JSON.parse(instruction.args);
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    throw new Error(`${instruction.keyword} ${instruction.args}: unsupported form; write it as a JSON array`);
  }
  return value;
}

/**
 * Stages the image described by the repository's Dockerfile in a new
 * temporary folder. Fails on an instruction it cannot reproduce, naming it,
 * so that a changed Dockerfile changes this staging too.
 */
export async function stageImage(): Promise<StagedImage> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'tollgate-image-'));
  const remove = (): Promise<void> => rm(root, { recursive: true, force: true });
  try {
    const staged: StagedImage = { root, workdir: root, node: '', uid: 0, gid: 0, nodeMajor: 0, entrypoint: [], cmd: [], remove };
    for (const instruction of instructions(await readFile(path.join(ROOT, 'Dockerfile'), 'utf8'))) {
      await apply(staged, instruction);
    }
    if (staged.entrypoint[0] !== 'node') throw new Error(`ENTRYPOINT ${JSON.stringify(staged.entrypoint)} does not start with node`);

    staged.node = path.join(root, 'usr', 'local', 'bin', 'node');
    await mkdir(path.dirname(staged.node), { recursive: true });
    await copyFile(process.execPath, staged.node);
    // mkdtemp creates a private folder, so its files are opened to the image's user.
    await run('chmod', ['-R', 'a+rX', root]);
    await chmod(staged.node, 0o755);
    return staged;
  } catch (error) {
    await remove();
    throw error;
  }
}

async function apply(staged: StagedImage, instruction: Instruction): Promise<void> {
  const { keyword, args } = instruction;
  switch (keyword) {
    case 'FROM': {
      const match = /^node:(\d+)(-[a-z0-9.-]+)?$/.exec(args);
      if (!match) throw new Error(`FROM ${args}: unsupported base image; the staging supports node:<major> images only`);
      staged.nodeMajor = Number(match[1]);
      return;
    }
    case 'WORKDIR':
      staged.workdir = path.join(staged.root, args);
      await mkdir(staged.workdir, { recursive: true });
      return;
    case 'COPY': {
      const parts = args.split(/\s+/);
      if (parts.some((part) => part.startsWith('--'))) throw new Error(`COPY ${args}: COPY flags are not supported by the staging`);
      const target = path.resolve(staged.workdir, parts.pop()!);
      for (const source of parts) {
        const into = parts.length > 1 || args.endsWith('/') ? path.join(target, path.basename(source)) : target;
        await cp(path.join(ROOT, source), into, { recursive: true });
      }
      return;
    }
    case 'RUN': {
      const words = args.split(/\s+/);
      if (words[0] !== 'npm' || words[1] !== 'ci') throw new Error(`RUN ${args}: unsupported command; the staging runs npm ci only`);
      // The project's own npm ci filled the cache, so the same packages install without a download.
      await run('npm', [...words.slice(1), '--prefer-offline'], { cwd: staged.workdir, maxBuffer: 16 * 1024 * 1024 });
      return;
    }
    case 'USER': {
      const [uid, gid] = args.split(':').map(Number);
      if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error(`USER ${args}: invalid user; write it as numeric uid:gid`);
      staged.uid = uid!;
      staged.gid = gid!;
      return;
    }
    case 'ENTRYPOINT':
      staged.entrypoint = jsonArray(instruction);
      return;
    case 'CMD':
      staged.cmd = jsonArray(instruction);
      return;
    default:
      throw new Error(`${keyword} ${args}: unsupported instruction; add it to test/support/image.ts`);
  }
}

/**
 * Returns spawn options that run a process as the image's user. Switching
 * users needs root, so without root the process runs as the current user.
 */
export function imageUser(staged: StagedImage): { uid?: number; gid?: number } {
  return process.getuid?.() === 0 ? { uid: staged.uid, gid: staged.gid } : {};
}
