#!/usr/bin/env node
// Writes the CustomResourceDefinitions generated from src/api to crds/ and to the Helm
// chart's charts/tollgate/crds/, so that both copies stay identical.
//
//   node scripts/generate-crds.ts           write the files
//   node scripts/generate-crds.ts --check   only compare; exit 1 when a file is out of date

import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { generateCrdFiles } from '../src/api/crd.ts';

const REPOSITORY_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Folders that receive the generated files, relative to the repository root. */
export const CRD_OUTPUT_DIRS = ['crds', 'charts/tollgate/crds'];

// Generated file names start with the API group; other files in the folders are left alone.
const GENERATED_NAME = /^tollgate\.dev_.*\.yaml$/;

/** Lists the generated files that differ from, are missing in, or are stale in the output folders. */
export async function findOutdatedFiles(root = REPOSITORY_ROOT): Promise<string[]> {
  const outdated: string[] = [];
  const files = generateCrdFiles();

  for (const dir of CRD_OUTPUT_DIRS) {
    for (const file of files) {
      const relative = path.join(dir, file.fileName);
      const current = await readFile(path.join(root, relative), 'utf8').catch(() => undefined);
      if (current !== file.content) outdated.push(relative);
    }
    for (const stale of await findStaleFiles(root, dir, files.map((file) => file.fileName))) {
      outdated.push(path.join(dir, stale));
    }
  }
  return outdated;
}

async function findStaleFiles(root: string, dir: string, generatedNames: string[]): Promise<string[]> {
  const names = await readdir(path.join(root, dir)).catch(() => [] as string[]);
  return names.filter((name) => GENERATED_NAME.test(name) && !generatedNames.includes(name));
}

async function writeCrdFiles(root: string): Promise<void> {
  const files = generateCrdFiles();
  for (const dir of CRD_OUTPUT_DIRS) {
    await mkdir(path.join(root, dir), { recursive: true });
    for (const file of files) {
      await writeFile(path.join(root, dir, file.fileName), file.content);
    }
    // A kind removed from src/api must not leave its CRD behind.
    for (const stale of await findStaleFiles(root, dir, files.map((file) => file.fileName))) {
      await rm(path.join(root, dir, stale));
      console.log(`removed ${path.join(dir, stale)}`);
    }
    console.log(`wrote ${files.length} CRDs to ${dir}/`);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { check: { type: 'boolean', default: false } } });
  if (!values.check) {
    await writeCrdFiles(REPOSITORY_ROOT);
    return 0;
  }

  const outdated = await findOutdatedFiles();
  if (outdated.length === 0) {
    console.log('CRDs are up to date');
    return 0;
  }
  console.error(`out of date: ${outdated.join(', ')}\nRun: node scripts/generate-crds.ts`);
  return 1;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main();
}
