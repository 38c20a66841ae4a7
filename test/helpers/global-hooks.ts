import { liveChildren } from './processes.js';

/**
 * Root hooks: an unhandled rejection anywhere fails the running test, and no
 * suite may leave a child process running.
 */
const rejections: unknown[] = [];
process.on('unhandledRejection', (reason) => rejections.push(reason));

export const mochaHooks = {
  afterEach(this: Mocha.Context) {
    if (rejections.length > 0) {
      const r = rejections.splice(0);
      throw new Error(`unhandled rejection during test: ${String((r[0] as Error)?.stack ?? r[0])}`);
    }
  },
  afterAll() {
    const left = liveChildren();
    if (left.length > 0) {
      for (const c of left) c.kill('SIGKILL');
      throw new Error(`child processes leaked: ${left.map((c) => c.name).join(', ')}`);
    }
  },
};
