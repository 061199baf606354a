import { describe, expect, it } from 'vitest';
import { countTextTokens, estimatePromptFromBody, estimatePromptTokens, estimateTokensFromText, StreamedTextCounter } from './estimate.ts';
import { adapterFor, supportsProtocol, UnsupportedProtocolError, type Protocol } from './index.ts';

const WORDS = ['alpha', 'delta', 'echo', 'hotel', 'india', 'uniform', 'river', 'stone'];

/** Text of `count` words, each one token alone and after a space. */
function words(count: number): string {
  return Array.from({ length: count }, (_, i) => WORDS[i % WORDS.length]).join(' ');
}

describe('estimatePromptTokens', () => {
  it('bounds the tokens of the text in a JSON body', () => {
    const samples = [
      'Summarize the following report in three sentences.',
      '日本語のテキストをトークンに分割します。絵文字も🎉🎉🎉',
      '{"nested": "json with \\"quotes\\"", "n": [1, 2, 3]}\n\tline two',
      'a'.repeat(5000),
    ];
    for (const text of samples) {
      const body = JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: text }] });
      expect(estimatePromptTokens(Buffer.byteLength(body)), text.slice(0, 20)).toBeGreaterThanOrEqual(countTextTokens(text));
    }
  });

  it('returns whole non-negative counts', () => {
    expect(estimatePromptTokens(1234)).toBe(1234);
    expect(estimatePromptTokens(0)).toBe(0);
    expect(estimatePromptTokens(-5)).toBe(0);
    expect(estimatePromptTokens(Number.NaN)).toBe(0);
  });
});

describe('estimatePromptFromBody', () => {
  it('counts message text, not JSON', () => {
    // "user" is 1 token and "Tell me a long story." (21 characters) is 6; the whole body would be 24.
    const body = { model: 'gpt-4.1', stream: true, messages: [{ role: 'user', content: 'Tell me a long story.' }] };
    expect(estimatePromptFromBody(body)).toBe(7);
    expect(estimateTokensFromText(JSON.stringify(body))).toBe(24);
  });

  it('leaves out metadata and the model name', () => {
    const metadata = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`key-${i}`, `a value of some length ${i}`]));
    const body = { model: 'gpt-4.1', user: 'customer-1234', metadata, messages: [{ role: 'user', content: 'Tell me a long story.' }] };
    expect(estimatePromptFromBody(body)).toBe(7);
  });

  it('leaves out Responses API settings', () => {
    const body = {
      model: 'gpt-5',
      include: ['reasoning.encrypted_content', 'message.output_text.logprobs'],
      reasoning: { effort: 'high', summary: 'detailed' },
      truncation: 'auto',
      prompt_cache_retention: '24h',
      input: 'Tell me a long story.',
    };
    expect(estimatePromptFromBody(body)).toBe(6);
  });

  it('counts Responses instructions, input items and files', () => {
    const body = {
      instructions: 'Be brief.',
      input: [
        {
          role: 'user',
          content: [
            { type: 'input_text', text: 'abcdefgh' },
            { type: 'input_file', filename: 'a.pdf', file_data: `data:application/pdf;base64,${'A'.repeat(4000)}` },
          ],
        },
      ],
    };
    // "Be brief." 3, user 1, input_text 3, abcdefgh 2, input_file 3, a.pdf 2; the file's data URL counts nothing
    expect(estimatePromptFromBody(body)).toBe(14);
  });

  it('counts system prompts, content parts and tools', () => {
    const body = {
      system: [{ type: 'text', text: 'Be brief.' }],
      messages: [{ role: 'user', content: [{ type: 'text', text: 'abcdefgh' }] }],
      tools: [{ name: 'lookup', description: 'abcd' }],
    };
    // text 1, "Be brief." 3, user 1, text 1, abcdefgh 2, lookup 2, abcd 1
    expect(estimatePromptFromBody(body)).toBe(11);
  });

  it('skips inline media', () => {
    const body = {
      contents: [{ role: 'user', parts: [{ text: 'alpha delta echo hotel' }, { inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo'.repeat(1000) } }] }],
    };
    // user 1, the text 6, "image/png" 3
    expect(estimatePromptFromBody(body)).toBe(10);
    const dataUrl = { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: `data:image/png;base64,${'A'.repeat(4000)}` } }] }] };
    // user 1, image_url 3
    expect(estimatePromptFromBody(dataUrl)).toBe(4);
  });

  it('counts each Gemini batch item like one embedContent', () => {
    const single = { content: { parts: [{ text: 'hello toll gate' }] }, taskType: 'RETRIEVAL_DOCUMENT' };
    const item = { model: 'models/gemini-embedding-001', ...single };
    // "hello toll gate" has 15 characters: 4 tokens. The model name and the task type are not embedded.
    expect(estimatePromptFromBody(single)).toBe(4);
    expect(estimatePromptFromBody({ requests: [item] })).toBe(4);
    expect(estimatePromptFromBody({ requests: [item, { ...item, content: { parts: [{ text: 'a b c d e f' }] } }] })).toBe(7);
  });

  it('leaves out option settings and stop sequences', () => {
    const gemini = {
      contents: [{ parts: [{ text: 'Tell me a long story.' }] }],
      safetySettings: [{ category: 'HARM_CATEGORY_HARASSMENT', threshold: 'BLOCK_NONE' }],
      toolConfig: { functionCallingConfig: { mode: 'AUTO' } },
    };
    expect(estimatePromptFromBody(gemini)).toBe(6);
    const openai = { messages: [{ role: 'user', content: 'Tell me a long story.' }], stop: ['\n\n', 'END'], tool_choice: 'auto' };
    expect(estimatePromptFromBody(openai)).toBe(7);
    const anthropic = { messages: [{ role: 'user', content: 'Tell me a long story.' }], stop_sequences: ['END'], tool_choice: { type: 'auto' } };
    expect(estimatePromptFromBody(anthropic)).toBe(7);
  });

  it('counts a Gemini response schema, not its options', () => {
    const schema = { type: 'OBJECT', properties: { answer: { type: 'STRING', description: 'The answer in one sentence' } } };
    const generationConfig = { responseMimeType: 'application/json', stopSequences: ['THE END'], responseModalities: ['TEXT'], responseSchema: schema };
    const body = { contents: [{ parts: [{ text: 'Tell me a long story.' }] }], generationConfig };
    // The text 6; OBJECT 2, STRING 2 and the description 7.
    expect(estimatePromptFromBody(body)).toBe(17);
    expect(estimatePromptFromBody({ ...body, generation_config: { response_json_schema: schema }, generationConfig: undefined })).toBe(17);
  });
});

describe('estimateTokensFromText', () => {
  it('counts four ASCII characters per token', () => {
    expect(estimateTokensFromText('abcdefgh')).toBe(2);
    expect(estimateTokensFromText('abcdefghi')).toBe(3);
    expect(estimateTokensFromText('')).toBe(0);
  });

  it('counts one token per other code unit', () => {
    expect(estimateTokensFromText('日本語')).toBe(3);
  });
});

describe('StreamedTextCounter', () => {
  it('matches a whole-text count across many batches', () => {
    const counter = new StreamedTextCounter();
    const text = words(5000);
    for (let i = 0; i < text.length; i += 37) counter.add(text.slice(i, i + 37));
    expect(counter.total()).toBe(5000);
    expect(counter.sawText).toBe(true);
  });

  it('returns the same total when asked twice', () => {
    const counter = new StreamedTextCounter();
    counter.add('alpha delta');
    expect(counter.total()).toBe(2);
    expect(counter.total()).toBe(2);
    counter.add(' echo');
    expect(counter.total()).toBe(3);
  });

  it('counts special-token strings as plain text', () => {
    const counter = new StreamedTextCounter();
    counter.add('<|endoftext|>');
    expect(counter.total()).toBeGreaterThan(1);
  });

  it('ignores empty and non-string input', () => {
    const counter = new StreamedTextCounter();
    counter.add('');
    counter.add(null);
    counter.add(42);
    expect(counter.sawText).toBe(false);
    expect(counter.total()).toBe(0);
  });
});

describe('adapterFor', () => {
  it('returns one shared adapter per protocol', () => {
    expect(adapterFor('openai')).toBe(adapterFor('openai'));
    expect(adapterFor('openai').protocol).toBe('openai');
    expect(adapterFor('openai-compatible').protocol).toBe('openai-compatible');
    expect(adapterFor('anthropic').protocol).toBe('anthropic');
    expect(adapterFor('gemini').protocol).toBe('gemini');
    expect(adapterFor('azure-openai').protocol).toBe('azure-openai');
  });

  it('rejects a protocol without an adapter', () => {
    // A value outside the Protocol type, as a resource written for a newer version could carry.
    const unknown = 'bedrock' as Protocol;
    expect(supportsProtocol(unknown)).toBe(false);
    expect(() => adapterFor(unknown)).toThrow(UnsupportedProtocolError);
    expect(() => adapterFor(unknown)).toThrow(
      'no adapter for protocol "bedrock": supported protocols are openai, openai-compatible, anthropic, gemini, azure-openai',
    );
  });
});
