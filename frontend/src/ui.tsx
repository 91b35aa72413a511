// Small pieces the pages share: times, document titles, character counters.
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
