// The project logger's records, captured in-process: what a test asserts about warnings and fields.
import { Writable } from 'node:stream';
import winston from 'winston';
import { log } from '../../src/log';

export interface LogCapture {
  records: Array<Record<string, unknown>>;
  /** The text of every record, for checks that something never appears. */
  text(): string;
  stop(): void;
}

export function captureLogs(): LogCapture {
  const lines: string[] = [];
  const records: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) {
        lines.push(line);
        records.push(JSON.parse(line));
      }
      done();
    },
  });
  const transport = new winston.transports.Stream({ stream });
  log.add(transport);
  return { records, text: () => lines.join('\n'), stop: () => void log.remove(transport) };
}
