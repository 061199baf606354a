import type { IncomingHttpHeaders } from 'node:http';
import type { CompiledWallet, Snapshot } from '../src/config/snapshot.ts';

export const WALLET_HEADER = 'x-tollgate-wallet';
export const END_USER_HEADER = 'x-tollgate-end-user';

/** Error codes of WalletResolutionError, as the sidecar returns them. */
export type WalletErrorCode = 'wallet_not_found' | 'wallet_not_allowed' | 'invalid_request';

/**
 * Why no wallet could pay, with the HTTP status: 403 when the wallet is
 * missing (`wallet_not_found`) or the request may not use it
 * (`wallet_not_allowed`), 400 when the request's headers are malformed
 * (`invalid_request`).
 */
export class WalletResolutionError extends Error {
  override readonly name = 'WalletResolutionError';
  readonly code: WalletErrorCode;
  readonly status: number;

  constructor(code: WalletErrorCode, message: string) {
    super(message);
    this.code = code;
    this.status = code === 'invalid_request' ? 400 : 403;
  }
}

export interface WalletPolicy {
  /** The pod's own wallet ("namespace/name"); it pays unless a header names another one. */
  defaultWallet: string | undefined;
  /** Whether a request may name any wallet in the x-tollgate-wallet header (local mode only). */
  allowWalletHeader: boolean;
}

/**
 * Returns a header's one value. Node joins the values of a repeated header
 * with ", ", and no wallet name or end-user id contains a comma, so a comma
 * means the header was sent more than once.
 */
function single(headers: IncomingHttpHeaders, name: string): string | undefined {
  const raw = headers[name];
  const value = Array.isArray(raw) ? raw.join(', ') : raw;
  if (value?.includes(',')) throw new WalletResolutionError('invalid_request', `the ${name} header was sent more than once ("${value}"); send it once`);
  return value;
}

/**
 * Finds the wallet that pays for a request: the end-user wallet named in the
 * x-tollgate-end-user header when the pod's wallet allows it, else a wallet
 * named in x-tollgate-wallet where permitted, else the pod's own wallet.
 */
export function resolveWallet(snapshot: Snapshot, headers: IncomingHttpHeaders, policy: WalletPolicy): CompiledWallet {
  const named = single(headers, WALLET_HEADER);
  if (named !== undefined && !policy.allowWalletHeader) {
    throw new WalletResolutionError('wallet_not_allowed', `the ${WALLET_HEADER} header is not allowed here: this sidecar bills its pod's wallet only`);
  }

  const baseId = named ?? policy.defaultWallet;
  if (baseId === undefined) {
    throw new WalletResolutionError('invalid_request', `no wallet pays for this request: set the ${WALLET_HEADER} header or start the sidecar with a default wallet`);
  }
  // The wallet header is allowed in local mode only, where every wallet belongs to the developer, so its error lists them.
  const base = lookup(snapshot, baseId, policy, policy.allowWalletHeader);

  const endUser = single(headers, END_USER_HEADER);
  if (endUser === undefined) return base;
  if (!base.endUsersAllowed) {
    throw new WalletResolutionError(
      'wallet_not_allowed',
      `wallet "${base.id}" does not allow end-user wallets; set spec.endUsers.allowed to true to use the ${END_USER_HEADER} header`,
    );
  }
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(endUser)) {
    throw new WalletResolutionError(
      'invalid_request',
      `invalid ${END_USER_HEADER} "${endUser}": use 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit`,
    );
  }
  return lookup(snapshot, `${base.key.namespace}/${base.endUserPrefix}${endUser}`, policy, false);
}

/** Maximum number of wallet names that a "not found" message lists. */
const LISTED_WALLETS_MAX = 20;

/**
 * Finds a wallet by "namespace/name", or by name in the namespace of the
 * pod's wallet. The error for a missing wallet lists the namespace's wallets
 * only when `listKnown` is set, because in a pod those names include other
 * end users' wallets, and the client that gets the error may be an end user.
 */
function lookup(snapshot: Snapshot, id: string, policy: WalletPolicy, listKnown: boolean): CompiledWallet {
  const namespace = policy.defaultWallet?.split('/')[0] ?? 'default';
  const fullId = id.includes('/') ? id : `${namespace}/${id}`;
  const wallet = snapshot.wallets.get(fullId);
  if (wallet) return wallet;

  const [walletNamespace = '', name = ''] = fullId.split('/');
  const create = `create a Wallet resource named "${name}" in namespace ${walletNamespace}`;
  if (!listKnown) throw new WalletResolutionError('wallet_not_found', `wallet "${fullId}" not found; ${create}`);

  const known = listWalletNames(snapshot, walletNamespace);
  if (known === undefined) {
    throw new WalletResolutionError('wallet_not_found', `wallet "${fullId}" not found, and namespace ${walletNamespace} has no wallets; ${create}`);
  }
  throw new WalletResolutionError('wallet_not_found', `wallet "${fullId}" not found; use one of the wallets in namespace ${walletNamespace} (${known}) or ${create}`);
}

/**
 * Returns the sorted names of a namespace's wallets, at most
 * LISTED_WALLETS_MAX of them and a count of the rest, or undefined when the
 * namespace has none.
 */
export function listWalletNames(snapshot: Snapshot, namespace: string): string | undefined {
  const names: string[] = [];
  for (const wallet of snapshot.wallets.values()) {
    if (wallet.key.namespace === namespace) names.push(wallet.key.name);
  }
  if (names.length === 0) return undefined;

  names.sort();
  const listed = names.slice(0, LISTED_WALLETS_MAX).join(', ');
  return names.length > LISTED_WALLETS_MAX ? `${listed} and ${names.length - LISTED_WALLETS_MAX} more` : listed;
}
