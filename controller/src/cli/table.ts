/**
 * A tiny aligned-table formatter for llmctl's human output: a header row, then
 * one row per item, columns left-aligned and two spaces apart, no trailing
 * spaces. Cells are made single-line; an empty cell shows as `-`.
 */
export function formatTable(headers: readonly string[], rows: readonly (readonly unknown[])[]): string {
  const cells = [headers.map(cell), ...rows.map((r) => headers.map((_, i) => cell(r[i])))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function cell(v: unknown): string {
  if (v === null || v === undefined || v === '') return '-';
  return String(v).replace(/\s*[\r\n]+\s*/g, ' ');
}
