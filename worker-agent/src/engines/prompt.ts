import type { ChatMessage } from '@llmux/shared';

/**
 * The documented fallback for models whose file carries no chat template:
 * the message texts joined by blank lines, with no role markers, so a base
 * model (such as TinyStories) continues the user's text.
 */
export function joinMessages(messages: readonly ChatMessage[]): string {
  return messages
    .map((m) => m.content)
    .filter((c) => c.length > 0)
    .join('\n\n');
}
