import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../shared/logger';

/** A logger whose JSON lines are pushed onto `lines`, for assertions on what a process logs. */
export function capturingLogger(lines: string[], name: string, level = 'info'): Logger {
  const destination = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      callback();
    },
  });
  return createLogger({ level, name, destination });
}
