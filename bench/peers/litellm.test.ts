import { describe, expect, it } from 'vitest';
import { litellmEnvironment, renderLiteLLMConfig, usdText, type LiteLLMOptions } from './litellm.ts';

const base: LiteLLMOptions = {
  port: 14000,
  upstreamUrl: 'http://127.0.0.1:40123/v1/',
  redisUrl: 'redis://127.0.0.1:6379',
  model: 'gpt-4o-mini',
  budgetUsd: '12.50',
  inputPricePerToken: '0.00000015',
  outputPricePerToken: 600n,
};

describe('renderLiteLLMConfig', () => {
  it('renders the model, budget and Redis settings', () => {
    expect(renderLiteLLMConfig(base)).toBe(
      [
        'model_list:',
        '  - model_name: "gpt-4o-mini"',
        '    litellm_params:',
        '      model: "openai/gpt-4o-mini"',
        '      api_base: "http://127.0.0.1:40123/v1"',
        '      api_key: "sk-bench-upstream"',
        '      input_cost_per_token: 0.00000015',
        '      output_cost_per_token: 0.0000006',
        '      max_budget: 12.50',
        '      budget_duration: "30d"',
        '      max_retries: 0',
        '      rpm: 100000000',
        'general_settings:',
        '  master_key: "sk-bench-master"',
        '  coordination_redis:',
        '    url: "redis://127.0.0.1:6379"',
        '  forward_client_headers_to_llm_api: true',
        'router_settings:',
        '  redis_url: "redis://127.0.0.1:6379"',
        '  num_retries: 0',
        '  disable_cooldowns: true',
        '  optional_pre_call_checks: ["enforce_model_rate_limits"]',
        '',
      ].join('\n'),
    );
  });

  it('omits the rate check when rpmLimit is 0', () => {
    const config = renderLiteLLMConfig({ ...base, rpmLimit: 0 });
    expect(config).not.toContain('rpm:');
    expect(config).not.toContain('enforce_model_rate_limits');
  });

  it('rejects a model id that would break the YAML', () => {
    expect(() => renderLiteLLMConfig({ ...base, model: 'a"\nb' })).toThrow(/invalid model/);
  });

  it('rejects a master key without the sk- prefix', () => {
    expect(() => renderLiteLLMConfig({ ...base, masterKey: 'bench' })).toThrow(/requires the "sk-" prefix/);
  });

  it('rejects an unknown budget duration unit', () => {
    expect(() => renderLiteLLMConfig({ ...base, budgetDuration: '2w' })).toThrow(/invalid budgetDuration "2w"/);
  });

  it('rejects a relative upstream URL', () => {
    expect(() => renderLiteLLMConfig({ ...base, upstreamUrl: '/v1' })).toThrow(/invalid upstreamUrl "\/v1"/);
  });
});

describe('usdText', () => {
  it('formats nano-USD without floats', () => {
    expect(usdText(1n, 'price')).toBe('0.000000001');
    expect(usdText(2_500_000_000n, 'budget')).toBe('2.5');
    expect(usdText(0n, 'budget')).toBe('0');
  });

  it('keeps decimal strings as written', () => {
    expect(usdText('0.0000000375', 'price')).toBe('0.0000000375');
  });

  it('rejects exponent notation and negative amounts', () => {
    expect(() => usdText('1e-7', 'price')).toThrow(/invalid price "1e-7"/);
    expect(() => usdText(-1n, 'budget')).toThrow(/invalid budget -1 nano-USD/);
  });
});

describe('litellmEnvironment', () => {
  it('drops inherited database and Redis settings', () => {
    const env = litellmEnvironment({ DATABASE_URL: 'postgresql://x', REDIS_HOST: 'h', PATH: '/bin' });
    expect(env['DATABASE_URL']).toBeUndefined();
    expect(env['REDIS_HOST']).toBeUndefined();
    expect(env['PATH']).toBe('/bin');
  });

  it('keeps LiteLLM off the network and quiet', () => {
    const env = litellmEnvironment({});
    expect(env['LITELLM_LOCAL_MODEL_COST_MAP']).toBe('True');
    expect(env['LITELLM_LOG']).toBe('ERROR');
    expect(env['LITELLM_MODE']).toBe('PRODUCTION');
  });
});
