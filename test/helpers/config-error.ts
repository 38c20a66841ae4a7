import { expect } from 'chai';
import { ConfigError } from '@llmux/shared';

/** Runs `fn`, expects it to throw a ConfigError, and returns its message. */
export function configError(fn: () => unknown): string {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a ConfigError').to.be.instanceOf(ConfigError);
  return (thrown as ConfigError).message;
}
