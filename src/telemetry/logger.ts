import { pino, stdSerializers, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

/**
 * Creates the process logger: JSON lines, level from LOG_LEVEL (default info),
 * credentials redacted. An error's causes are logged as nested objects
 * (err.cause) rather than appended to its message, because Tollgate's error
 * messages already name their cause.
 */
export function createLogger(name: string, level = process.env.LOG_LEVEL ?? 'info', destination?: DestinationStream): Logger {
  const options: LoggerOptions = {
    name,
    level,
    serializers: { err: stdSerializers.errWithCause },
    redact: {
      paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'headers.authorization', 'headers["x-api-key"]', 'credential'],
      censor: '[redacted]',
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
