import { pino, type Logger } from 'pino';

/** Creates the process logger: JSON lines, level from LOG_LEVEL (default info), credentials redacted. */
export function createLogger(name: string, level = process.env.LOG_LEVEL ?? 'info'): Logger {
  return pino({
    name,
    level,
    redact: {
      paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'headers.authorization', 'headers["x-api-key"]', 'credential'],
      censor: '[redacted]',
    },
  });
}
