// The one logger: structured JSON lines on stderr (the journal picks them up under systemd).
import winston from 'winston';

export const log = winston.createLogger({
  level: process.env.EROFS_ONDEMAND_LOG_LEVEL ?? 'info',
  format: winston.format.combine(winston.format.timestamp(), winston.format.errors({ stack: false }), winston.format.json()),
  transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly'] })],
});
