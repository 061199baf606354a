import { pathOnly } from './fields.ts';

/**
 * Kind of an endpoint of a route, by how the sidecar serves it:
 * - metered: POST requests are read by the adapter's `inspect`, priced, held and billed.
 * - models: GET and HEAD requests are forwarded without billing, because the
 *   endpoint only lists or describes models.
 */
export type EndpointKind = 'metered' | 'models';

/**
 * Tells whether a GET or HEAD path is a models endpoint. Each pattern must
 * start with `/`, end with `$` and have no `g` or `y` flag. The match must start within the route's
 * base path (`basePath`, which `path` starts with) or right after it. So a
 * client cannot reach another endpoint of the shared provider account by
 * putting segments before a models path, such as
 * `/v1/files/file-1/content/v1/models`.
 */
export function isModelsPath(path: string, basePath: string, patterns: readonly RegExp[]): boolean {
  const endpoint = pathOnly(path);
  for (const pattern of patterns) {
    // exec finds the leftmost match, so no match starts earlier than the one it returns.
    const match = pattern.exec(endpoint);
    if (match !== null && match.index <= basePath.length) return true;
  }
  return false;
}
