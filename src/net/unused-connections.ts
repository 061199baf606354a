import type { IncomingMessage, Server } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

/** The connections of a server that have not carried a request yet. */
export interface UnusedConnections {
  /**
   * Ends every connection that has not carried a request yet, and from then
   * on each new one at once: an HTTPS connection whose handshake was still
   * running counts only when the handshake ends.
   */
  destroy(): void;
}

/**
 * Tracks the connections of `server` that have not carried a request yet, so
 * that closing the server can end them. Node's server.close() ends idle
 * keep-alive connections, but waits for one that a client opened and never
 * used (HTTP clients open spare connections) until it times out. For an HTTPS
 * server a connection counts from the end of its TLS handshake.
 * NOTE: a client that stalls inside the handshake still keeps close() waiting until
 * the TLS server's handshake timeout (120 s by default) ends it.
 */
export function trackUnusedConnections(server: Server | HttpsServer): UnusedConnections {
  const unused = new Set<Socket>();
  let closing = false;
  const track = (socket: Socket): void => {
    if (closing) {
      socket.destroy();
      return;
    }
    unused.add(socket);
    socket.once('close', () => unused.delete(socket));
  };
  if ('setSecureContext' in server) server.on('secureConnection', track);
  else server.on('connection', track);
  server.on('request', (request: IncomingMessage) => unused.delete(request.socket));
  return {
    destroy: () => {
      closing = true;
      for (const socket of unused) socket.destroy();
    },
  };
}
