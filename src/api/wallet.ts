import { z } from 'zod';
import { API_GROUP_VERSION, Condition, Currency, Money, ObjectMeta } from './common.ts';

export const Grant = z.object({
  id: z.string().min(1).max(128).regex(/^[A-Za-z0-9._:-]+$/, { message: 'must contain only letters, digits and . _ : -' }),
  amount: Money,
  reason: z.string().max(256).optional(),
  expiresAt: z.iso
    .datetime({
      offset: true,
      error: (issue) => `must be an RFC 3339 time with a time zone, such as "2027-01-31T00:00:00Z", not ${JSON.stringify(issue.input)}`,
    })
    .optional(),
});
export type Grant = z.infer<typeof Grant>;

/** Maximum number of grants in one Wallet spec. */
export const MAX_GRANTS = 200;

export const WalletSpec = z.object({
  currency: Currency,
  pricePlanRef: z.object({ name: z.string().min(1) }),
  // Bounded because the API server checks grant ids for duplicates with a CEL rule whose
  // cost grows with the square of the list.
  grants: z.array(Grant).max(MAX_GRANTS).default([]),
  limits: z
    .object({
      maxPerRequest: Money.optional(),
      daily: Money.optional(),
      monthly: Money.optional(),
    })
    .optional(),
  lowBalanceThreshold: Money.optional(),
  endUsers: z
    .object({
      allowed: z.boolean().default(false),
      prefix: z.string().regex(/^[a-z0-9][a-z0-9-]*$/).optional(),
    })
    .optional()
    .describe('Whether requests may name an end-user wallet "<prefix><id>" in the x-tollgate-end-user header.'),
});
export type WalletSpec = z.infer<typeof WalletSpec>;

export const WalletStatus = z.object({
  balance: z.string().optional(),
  reserved: z.string().optional(),
  spent: z.string().optional(),
  granted: z.string().optional(),
  expired: z.string().optional(),
  appliedGrants: z.array(z.string()).optional(),
  observedGeneration: z.number().int().optional(),
  conditions: z.array(Condition).optional(),
});

export const Wallet = z.object({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal('Wallet'),
  metadata: ObjectMeta,
  spec: WalletSpec,
  status: WalletStatus.optional(),
});
export type Wallet = z.infer<typeof Wallet>;
