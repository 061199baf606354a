import type { IncomingHttpHeaders } from 'node:http';
import type { Controls } from './controls.ts';

/** Response of a simulated endpoint: one JSON body, or a server-sent event stream. */
export type SimResponse =
  | { kind: 'json'; status: number; body: unknown }
  | { kind: 'stream'; events: StreamEvent[] };

export interface StreamEvent {
  /** The event as written on the wire, ending with its blank line. */
  text: string;
  /** True for events that carry generated content, which delays and cuts count. */
  content: boolean;
}

/** One simulated provider: how it authenticates and how it writes errors. */
export interface SimProvider {
  /** Returns the credential the request carries in its headers or URL, or undefined. */
  credential(headers: IncomingHttpHeaders, url: URL): string | undefined;
  /** Builds an error body in the provider's format. */
  errorBody(status: number, message: string, requestId: string): unknown;
  /** Returns the message of the provider's 404 for a method and path it does not serve. */
  notFoundMessage(method: string, path: string): string;
  /** Response header that carries the request id. */
  readonly requestIdHeader: string;
}

/** One simulated endpoint. */
export interface SimEndpoint {
  readonly name: 'chat' | 'responses' | 'embeddings' | 'messages' | 'generateContent' | 'embedContent';
  readonly provider: SimProvider;
  /** Builds the response. `url` is the request URL, which names the model and method of Gemini requests. */
  respond(body: Record<string, unknown>, controls: Controls, id: string, url: URL): SimResponse;
}

/** Returns the error response of a request the provider would reject. */
export function invalidRequest(provider: SimProvider, message: string, id: string): SimResponse {
  return { kind: 'json', status: 400, body: provider.errorBody(400, message, id) };
}
