/**
 * Peer gateways that the benchmark compares Tollgate against, each started
 * as a local process in front of the same OpenAI-compatible upstream.
 * Install them first with bench/peers/install.sh.
 */
export { peersCacheDir, type PeerGateway } from './process.ts';
export { startPortkey, portkeyHeaders, type PortkeyOptions } from './portkey.ts';
export { startLiteLLM, renderLiteLLMConfig, type LiteLLMOptions, type UsdAmount } from './litellm.ts';
