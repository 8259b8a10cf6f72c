// The one logger: structured JSON lines on stderr (the journal picks them up under systemd).
// winston is a large part of a short command's start-up (the mount helper, status, a conversion that
// logs nothing), so it is loaded by the first record at an enabled level, or by the first transport
// added.
import type winston from 'winston';
import type TransportStream from 'winston-transport';

const LEVELS = { error: 0, warn: 1, info: 2, http: 3, verbose: 4, debug: 5, silly: 6 } as const;
export type LogLevel = keyof typeof LEVELS;
type Meta = object;

function isLevel(level: string): level is LogLevel {
  return Object.hasOwn(LEVELS, level);
}

function createLogger(level: string): winston.Logger {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const w = require('winston') as typeof winston;
  return w.createLogger({
    level,
    format: w.format.combine(w.format.timestamp(), w.format.errors({ stack: false }), w.format.json()),
    transports: [new w.transports.Console({ stderrLevels: Object.keys(LEVELS) })],
  });
}

export class Logger {
  private winston: winston.Logger | undefined;
  private threshold: string;

  constructor(level: string) {
    this.threshold = level;
  }

  get level(): string {
    return this.winston?.level ?? this.threshold;
  }

  set level(level: string) {
    this.threshold = level;
    if (this.winston) this.winston.level = level;
  }

  log(level: LogLevel, message: string, meta?: Meta): void {
    // An unknown configured level is left for winston to judge, as it was before loading was lazy.
    if (!this.winston && isLevel(this.threshold) && LEVELS[level] > LEVELS[this.threshold]) return;
    this.loaded().log(level, message, meta);
  }

  error(message: string, meta?: Meta): void {
    this.log('error', message, meta);
  }
  warn(message: string, meta?: Meta): void {
    this.log('warn', message, meta);
  }
  info(message: string, meta?: Meta): void {
    this.log('info', message, meta);
  }
  debug(message: string, meta?: Meta): void {
    this.log('debug', message, meta);
  }

  add(transport: TransportStream): this {
    this.loaded().add(transport);
    return this;
  }

  remove(transport: TransportStream): this {
    this.winston?.remove(transport);
    return this;
  }

  private loaded(): winston.Logger {
    return (this.winston ??= createLogger(this.threshold));
  }
}

export const log = new Logger(process.env.EROFS_ONDEMAND_LOG_LEVEL ?? 'info');
