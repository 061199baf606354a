import type { IncomingHttpHeaders } from 'node:http';
import type { CompiledWallet, Snapshot } from '../src/config/snapshot.ts';

export const WALLET_HEADER = 'x-tollgate-wallet';
export const END_USER_HEADER = 'x-tollgate-end-user';

export class WalletResolutionError extends Error {
  override readonly name = 'WalletResolutionError';
  readonly status: number;

  constructor(message: string, status = 403) {
    super(message);
    this.status = status;
  }
}

export interface WalletPolicy {
  /** The pod's own wallet ("namespace/name"); it pays unless a header names another one. */
  defaultWallet: string | undefined;
  /** Whether a request may name any wallet in the x-tollgate-wallet header (local mode only). */
  allowWalletHeader: boolean;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Finds the wallet that pays for a request: the end-user wallet named in the
 * x-tollgate-end-user header when the pod's wallet allows it, else a wallet
 * named in x-tollgate-wallet where permitted, else the pod's own wallet.
 */
export function resolveWallet(snapshot: Snapshot, headers: IncomingHttpHeaders, policy: WalletPolicy): CompiledWallet {
  const named = single(headers[WALLET_HEADER]);
  if (named !== undefined && !policy.allowWalletHeader) {
    throw new WalletResolutionError(`the ${WALLET_HEADER} header is not allowed here: this sidecar bills its pod's wallet only`);
  }

  const baseId = named ?? policy.defaultWallet;
  if (baseId === undefined) {
    throw new WalletResolutionError(`no wallet pays for this request: set the ${WALLET_HEADER} header or start the sidecar with a default wallet`, 400);
  }
  const base = lookup(snapshot, baseId, policy);

  const endUser = single(headers[END_USER_HEADER]);
  if (endUser === undefined) return base;
  if (!base.endUsersAllowed) {
    throw new WalletResolutionError(`wallet "${base.id}" does not allow end-user wallets; set spec.endUsers.allowed to true to use the ${END_USER_HEADER} header`);
  }
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(endUser)) {
    throw new WalletResolutionError(`invalid ${END_USER_HEADER} "${endUser}": use lowercase letters, digits and dashes`, 400);
  }
  return lookup(snapshot, `${base.key.namespace}/${base.endUserPrefix}${endUser}`, policy);
}

function lookup(snapshot: Snapshot, id: string, policy: WalletPolicy): CompiledWallet {
  const namespace = policy.defaultWallet?.split('/')[0] ?? 'default';
  const fullId = id.includes('/') ? id : `${namespace}/${id}`;
  const wallet = snapshot.wallets.get(fullId);
  if (!wallet) {
    throw new WalletResolutionError(`wallet "${fullId}" not found; create a Wallet resource with that name`, 403);
  }
  return wallet;
}
