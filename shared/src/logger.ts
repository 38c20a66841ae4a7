import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * Creates the process logger: pino JSON lines on stdout. `component` names the
 * process (gateway, worker-agent, controller) in every line.
 */
export function createLogger(component: string, level: LevelWithSilent | string = 'info'): Logger {
  return pino({ name: component, level, base: { component, pid: process.pid } });
}
