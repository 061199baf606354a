export * from './common.ts';
export * from './provider-route.ts';
export * from './price-plan.ts';
export * from './wallet.ts';
