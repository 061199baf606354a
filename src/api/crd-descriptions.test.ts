// `kubectl explain` prints a CRD field's description and nothing else about its meaning.
// So every field of the checked-in CRDs must have one, and a money field must state what its
// amount is for, not only the format that all money fields share.

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { describeMoney, describeRate, Money } from './common.ts';
import { generateCrdFiles, type CustomResourceDefinition, type StructuralSchema } from './crd.ts';

const REPOSITORY_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OUTPUT_DIRS = ['crds', 'charts/tollgate/crds'];

// The API server publishes the standard ObjectMeta schema, with its own descriptions, in
// place of the CRD's `metadata: {type: object}`, so the CRD does not describe it.
const PUBLISHED_BY_API_SERVER = new Set(['metadata']);

const MONEY_PATTERN = (z.toJSONSchema(Money) as { pattern: string }).pattern;
const MONEY_FORMATS = [describeMoney('').trim(), describeRate('').trim()];

/** A property of a schema, with its path: `[]` marks array items, `*` the values of a map. */
interface PropertyAt {
  path: string;
  node: StructuralSchema;
}

/** Lists every property of a schema and of its nested objects, list items and map values. */
function propertiesOf(node: StructuralSchema, at: string): PropertyAt[] {
  const found: PropertyAt[] = [];
  for (const [name, child] of Object.entries(node.properties ?? {})) {
    const childPath = at === '' ? name : `${at}.${name}`;
    found.push({ path: childPath, node: child }, ...propertiesOf(child, childPath));
  }
  if (node.items !== undefined) found.push(...propertiesOf(node.items, `${at}[]`));
  if (node.additionalProperties !== undefined) found.push(...propertiesOf(node.additionalProperties, `${at}.*`));
  return found;
}

/** Returns the paths of the properties that have no description, or an empty one. */
function undescribedProperties(schema: StructuralSchema): string[] {
  return propertiesOf(schema, '')
    .filter(({ path: at }) => !PUBLISHED_BY_API_SERVER.has(at))
    .filter(({ node }) => (node.description ?? '').trim() === '')
    .map(({ path: at }) => at);
}

/** Returns the paths of money properties whose description only states the money format, or none at all. */
function moneyPropertiesWithoutMeaning(schema: StructuralSchema): string[] {
  return propertiesOf(schema, '')
    .filter(({ node }) => node.pattern === MONEY_PATTERN)
    .filter(({ node }) => {
      const description = node.description ?? '';
      const format = MONEY_FORMATS.find((text) => description.endsWith(text));
      return format === undefined || description.slice(0, -format.length).trim() === '';
    })
    .map(({ path: at }) => at);
}

async function checkedInSchemas(dir: string): Promise<Array<{ file: string; schema: StructuralSchema }>> {
  const schemas: Array<{ file: string; schema: StructuralSchema }> = [];
  for (const { fileName } of generateCrdFiles()) {
    const file = path.join(dir, fileName);
    const crd = parseYaml(await readFile(path.join(REPOSITORY_ROOT, file), 'utf8')) as CustomResourceDefinition;
    for (const version of crd.spec.versions) {
      schemas.push({ file: `${file} (${version.name})`, schema: version.schema.openAPIV3Schema });
    }
  }
  return schemas;
}

describe('CRD field descriptions', () => {
  for (const dir of OUTPUT_DIRS) {
    it(`every property in ${dir}/ has one`, async () => {
      const schemas = await checkedInSchemas(dir);
      expect(schemas).toHaveLength(3);
      const undescribed = Object.fromEntries(schemas.map(({ file, schema }) => [file, undescribedProperties(schema)]));
      expect(undescribed).toEqual(Object.fromEntries(schemas.map(({ file }) => [file, []])));
    });

    it(`money fields in ${dir}/ state their purpose`, async () => {
      const schemas = await checkedInSchemas(dir);
      const formatOnly = Object.fromEntries(schemas.map(({ file, schema }) => [file, moneyPropertiesWithoutMeaning(schema)]));
      expect(formatOnly).toEqual(Object.fromEntries(schemas.map(({ file }) => [file, []])));
    });
  }

  it('check lists undescribed properties by path', () => {
    const schema: StructuralSchema = {
      type: 'object',
      properties: {
        metadata: { type: 'object' },
        spec: {
          description: 'Spec.',
          type: 'object',
          properties: {
            plain: { type: 'string' },
            blank: { description: ' ', type: 'string' },
            described: { description: 'A field.', type: 'string' },
            list: {
              description: 'A list.',
              type: 'array',
              items: { type: 'object', properties: { inItem: { type: 'integer' } } },
            },
            map: {
              description: 'A map.',
              type: 'object',
              additionalProperties: { type: 'object', properties: { inValue: { type: 'boolean' } } },
            },
          },
        },
      },
    };
    expect(undescribedProperties(schema)).toEqual(['spec.plain', 'spec.blank', 'spec.list[].inItem', 'spec.map.*.inValue']);
  });

  it('check finds money fields with only the format', () => {
    const money = (description?: string): StructuralSchema => ({
      ...(description === undefined ? {} : { description }),
      type: 'string',
      pattern: MONEY_PATTERN,
    });
    const schema: StructuralSchema = {
      type: 'object',
      properties: {
        bare: money(describeMoney('')),
        generic: money(Money.description),
        missing: money(),
        cap: money(describeMoney('Cap per day.')),
        rate: money(describeRate('Rate for input tokens.')),
        rateWithoutMeaning: money(describeRate('')),
      },
    };
    expect(moneyPropertiesWithoutMeaning(schema)).toEqual(['bare', 'generic', 'missing', 'rateWithoutMeaning']);
  });
});
