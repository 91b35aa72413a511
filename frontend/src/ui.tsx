// Small pieces the pages share: times, sizes, document titles, character counters.
import { useEffect } from 'react';

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** A point in time (epoch ms) in the reader's locale, with the exact ISO time in `title`. */
export function Time({ ms, testId }: { ms: number; testId?: string }) {
  const date = new Date(ms);
  const iso = Number.isNaN(date.getTime()) ? '' : date.toISOString();
  return (
    <time dateTime={iso} title={iso} data-testid={testId}>
      {iso ? dateFormat.format(date) : '—'}
    </time>
  );
}

const BYTE_UNITS = ['KiB', 'MiB', 'GiB'] as const;

/** A size in bytes for people: `512 B`, `1.5 KiB`, `6.0 MiB`, `2.3 GiB` (binary units, one decimal). */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${Math.max(0, Math.round(bytes))} B`;
  let value = bytes / 1024;
  let unit = 0;
  // Rounded to one decimal, 1023.96 KiB would read "1024.0 KiB": say 1.0 MiB instead.
  while (unit < BYTE_UNITS.length - 1 && Number(value.toFixed(1)) >= 1024) {
    value /= 1024;
    unit++;
  }
  return `${value.toLocaleString('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 })} ${BYTE_UNITS[unit]}`;
}

/** Sets the document title while the calling page is shown. */
export function useTitle(title: string): void {
  useEffect(() => {
    document.title = title;
  }, [title]);
}

/** "n / max" under a field; marked when over the limit. */
export function CharCount({ id, count, max, testId }: { id: string; count: number; max: number; testId: string }) {
  const over = count > max;
  return (
    <span
      id={id}
      className={over ? 'char-count over' : 'char-count'}
      data-testid={testId}
      data-over={over || undefined}
    >
      {count.toLocaleString('en-US')} / {max.toLocaleString('en-US')}
      {over ? ` — ${(count - max).toLocaleString('en-US')} too many` : ''}
    </span>
  );
}
