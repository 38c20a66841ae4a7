import type { z } from 'zod';

/** Renders zod issues as `path.to.field: message` lines, the path in JS notation. */
export function formatIssues(issues: readonly z.core.$ZodIssue[], root = ''): string {
  return issues
    .map((issue) => {
      const path = formatPath(issue.path, root);
      return path ? `${path}: ${issue.message}` : issue.message;
    })
    .join('; ');
}

/** `['messages', 0, 'content']` -> `messages[0].content`. */
export function formatPath(path: readonly PropertyKey[], root = ''): string {
  let out = root;
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}
