import { z } from 'zod';
import { formatAmount, MAX_LEDGER_AMOUNT } from '../money/money.ts';
import { API_GROUP_VERSION, Condition, Currency, describeCurrency, describeMoney, Money, ObjectMeta, strictObject } from './common.ts';

export const Grant = strictObject({
  id: z
    .string()
    .min(1)
    .max(128)
    .regex(/^[A-Za-z0-9._:-]+$/, { message: 'must contain only letters, digits and . _ : -' })
    .describe(
      'Id of the grant, unique within the wallet: 1 to 128 letters, digits, ".", "_", ":" or "-". ' +
        'The operator credits each id to the ledger once, so to top up, add a grant with a new id.',
    ),
  amount: Money.describe(
    describeMoney(
      `Amount the grant credits to the wallet, at most ${formatAmount(MAX_LEDGER_AMOUNT, 0)} (2^53 nano-units, the largest balance ` +
        'the ledger stores exactly); it cannot be changed after the grant is created.',
    ),
  ),
  reason: z
    .string()
    .max(256)
    .optional()
    .describe('Free-text note of at most 256 characters, such as an invoice number, recorded in the grant\'s ledger entry and GrantApplied Event.'),
  expiresAt: z.iso
    .datetime({
      offset: true,
      error: (issue) => `must be an RFC 3339 time with a time zone, such as "2027-01-31T00:00:00Z", not ${JSON.stringify(issue.input)}`,
    })
    .optional()
    .describe(
      'RFC 3339 time with a time zone at which the unspent rest of the grant lapses, except what open holds have promised; ' +
        'unset, the grant never expires. Expiring grants are spent first, earliest expiry first, and the expiry cannot be changed later.',
    ),
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
  currency: Currency.describe(
    describeCurrency(
      'Currency that the ledger keeps this wallet\'s money in. It cannot be changed, and the price plan must use the same currency.',
    ),
  ),
  pricePlanRef: strictObject({
    name: z
      .string()
      .min(1)
      .describe(
        'Name of the PricePlan in the wallet\'s namespace. While it does not exist or uses another currency, ' +
          'the Wallet is not Ready (PricePlanNotFound or CurrencyMismatch).',
      ),
  }).describe('Price plan that rates this wallet\'s calls, in the same namespace.'),
  // Bounded because the API server checks grant ids for duplicates with a CEL rule whose
  // cost grows with the square of the list.
  grants: z
    .array(Grant)
    .max(MAX_GRANTS)
    .superRefine(rejectDuplicateGrantIds)
    .default([])
    .describe(
      'Prepaid credits of the wallet, at most 200 (default none). The operator credits each grant to the ledger once by its id, ' +
        'and removing a grant from the list does not take its money back.',
    ),
  limits: strictObject({
    maxPerRequest: Money.optional().describe(
      describeMoney('Largest amount that one request may hold: a request whose worst-case cost is higher gets HTTP 402.'),
    ),
    daily: Money.optional().describe(
      describeMoney(
        'Cap on the amount charged plus held per UTC day. A request counts toward the day its hold was placed in, by the sidecar\'s clock.',
      ),
    ),
    monthly: Money.optional().describe(
      describeMoney(
        'Cap on the amount charged plus held per UTC calendar month. A request counts toward the month its hold was placed in, by the sidecar\'s clock.',
      ),
    ),
  })
    .optional()
    .describe(
      'Spend limits, checked with the available balance against the worst-case cost of each request before it is forwarded; ' +
        'a request that would exceed one gets HTTP 402. A limit that is not set does not apply.',
    ),
  lowBalanceThreshold: Money.optional().describe(
    describeMoney(
      'Balance below which the operator sets the LowBalance condition to True and records a LowBalance Warning Event; ' +
        'requests are still admitted. Unset, LowBalance stays False.',
    ),
  ),
  endUsers: strictObject({
    allowed: z
      .boolean()
      .default(false)
      .describe(
        'Whether a request may name an end user in the x-tollgate-end-user header (default false); ' +
          'without it, a request that sends the header gets HTTP 403.',
      ),
    prefix: z
      .string()
      .regex(/^[a-z0-9][a-z0-9-]*$/)
      .optional()
      .describe(
        'Name prefix of end-user wallets: the header value "bob" bills the Wallet "<prefix>bob". ' +
          'Lowercase letters, digits and "-", starting with a letter or digit; defaults to this wallet\'s name and a dash.',
      ),
  })
    .optional()
    .describe(
      'End-user billing: whether requests may bill the Wallet "<prefix><id>" in this namespace, named by the x-tollgate-end-user header. ' +
        'That Wallet must exist and is the only one charged, under its own plan and limits; this wallet\'s balance and limits do not apply.',
    ),
});
export type WalletSpec = z.infer<typeof WalletSpec>;

export const WalletStatus = strictObject({
  balance: z
    .string()
    .optional()
    .describe(
      'Granted minus spent and expired, as a decimal string of currency units such as "12.50"; negative when the wallet is overdrawn. ' +
        'Holds of calls in flight are not subtracted, see reserved.',
    ),
  reserved: z
    .string()
    .optional()
    .describe('Sum of the holds of calls in flight, in currency units; a new request may hold at most balance minus reserved.'),
  spent: z
    .string()
    .optional()
    .describe('Total charged to the wallet, in currency units: committed charges plus expired holds that the sweeper charged.'),
  granted: z.string().optional().describe('Total of all grants credited to the ledger, including grants that lapsed, in currency units.'),
  expired: z.string().optional().describe('Total taken back from expiring grants when they lapsed, in currency units.'),
  appliedGrants: z
    .array(z.string())
    .optional()
    .describe('Ids of the grants in spec.grants that the operator has credited to the ledger; later passes skip them. A grant removed from the spec leaves this list, and a grant added back under its id with another amount is not listed; the Ready message names it.'),
  observedGeneration: z.number().int().optional().describe('The metadata.generation of the spec that this status reflects.'),
  conditions: z
    .array(Condition)
    .optional()
    .describe(
      'Ready (the wallet can pay for calls), LowBalance (the balance is below lowBalanceThreshold) ' +
        'and Exhausted (the balance is zero or less).',
    ),
});

export const Wallet = strictObject({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal('Wallet'),
  metadata: ObjectMeta,
  spec: WalletSpec,
  status: WalletStatus.optional(),
});
export type Wallet = z.infer<typeof Wallet>;
