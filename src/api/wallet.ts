import { z } from 'zod';
import { API_GROUP_VERSION, Condition, Currency, Money, ObjectMeta, strictObject } from './common.ts';

export const Grant = strictObject({
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

/**
 * Reports each repeated grant id at its later occurrences. The ledger credits a grant id
 * once, so a second grant with the same id would never be credited. The CRD states the
 * same rule in CEL on spec.grants.
 */
function rejectDuplicateGrantIds(grants: Grant[], context: z.RefinementCtx): void {
  const seen = new Set<string>();
  grants.forEach((grant, index) => {
    if (seen.has(grant.id)) {
      context.addIssue({
        code: 'custom',
        path: [index, 'id'],
        message: `duplicate grant id "${grant.id}"; the ledger credits each id once, so give every grant its own id`,
      });
    }
    seen.add(grant.id);
  });
}

/** Maximum number of grants in one Wallet spec. */
export const MAX_GRANTS = 200;

export const WalletSpec = strictObject({
  currency: Currency,
  pricePlanRef: strictObject({ name: z.string().min(1) }),
  // Bounded because the API server checks grant ids for duplicates with a CEL rule whose
  // cost grows with the square of the list.
  grants: z.array(Grant).max(MAX_GRANTS).superRefine(rejectDuplicateGrantIds).default([]),
  limits: strictObject({
    maxPerRequest: Money.optional(),
    daily: Money.optional(),
    monthly: Money.optional(),
  }).optional(),
  lowBalanceThreshold: Money.optional(),
  endUsers: strictObject({
    allowed: z.boolean().default(false),
    prefix: z.string().regex(/^[a-z0-9][a-z0-9-]*$/).optional(),
  })
    .optional()
    .describe('Whether requests may name an end-user wallet "<prefix><id>" in the x-tollgate-end-user header.'),
});
export type WalletSpec = z.infer<typeof WalletSpec>;

export const WalletStatus = strictObject({
  balance: z.string().optional(),
  reserved: z.string().optional(),
  spent: z.string().optional(),
  granted: z.string().optional(),
  expired: z.string().optional(),
  appliedGrants: z.array(z.string()).optional(),
  observedGeneration: z.number().int().optional(),
  conditions: z.array(Condition).optional(),
});

export const Wallet = strictObject({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal('Wallet'),
  metadata: ObjectMeta,
  spec: WalletSpec,
  status: WalletStatus.optional(),
});
export type Wallet = z.infer<typeof Wallet>;
