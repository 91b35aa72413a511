// Reads that fail for a passing reason (503 unavailable, 504 timeout, the server not
// reached) are retried by themselves, with the server's Retry-After or a growing
// pause; every other failure is shown and waits for the person. Writes are never
// retried here: a second POST is a second item.
import { useEffect, useRef, useState } from 'react';
import { ApiError, describeError } from './api';

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10_000;

/** True when trying the same read again later may well work. */
export function isPassing(err: unknown): err is ApiError {
  return err instanceof ApiError && (err.status === 0 || err.status === 503 || err.status === 504);
}

/** Pause before retry number `attempt` (0-based): Retry-After when sent, else 1, 2, 4 … 10 s. */
export function retryDelayMs(err: ApiError, attempt: number): number {
  const asked = err.retryAfter === null ? RETRY_FIRST_MS * 2 ** Math.min(attempt, 4) : err.retryAfter * 1000;
  return Math.min(RETRY_MAX_MS, Math.max(RETRY_FIRST_MS, asked));
}

/** What the page says while it retries by itself. */
export function retryingMessage(err: ApiError): string {
  if (err.status === 503) return 'Service unavailable, retrying…';
  return `${err.message} Retrying…`;
}

/** What the page says for a failure it does not retry. */
export function failureMessage(err: unknown): string {
  return describeError(err);
}

export type LoadState = 'loading' | 'ready' | 'retrying' | 'error';

export interface Loaded<T> {
  /** Where the load for the current key stands. */
  state: LoadState;
  /** The last good answer for the current key; null before it. */
  data: T | null;
  /** The last good answer for any key (an earlier one while the current key loads). */
  previous: T | null;
  /** The error (state `error`, ApiError or other) or null. */
  error: unknown;
  /** The line to show for `retrying` and `error`, '' otherwise. */
  message: string;
}

interface Result<T> {
  key: string | null;
  state: LoadState;
  data: T | null;
  error: unknown;
  message: string;
}

/**
 * Runs `load` whenever `key` changes and keeps retrying passing failures until it
 * works or the key changes. Answers for an earlier key are never shown for a later
 * one: until the current key has its own answer the state is `loading`. A null key
 * loads nothing yet (state `loading`).
 */
export function useRetryingLoad<T>(key: string | null, load: () => Promise<T>): Loaded<T> {
  const loadRef = useRef(load);
  loadRef.current = load;
  const [result, setResult] = useState<Result<T> | null>(null);
  const [previous, setPrevious] = useState<T | null>(null);

  useEffect(() => {
    if (key === null) return;
    let cancelled = false;
    let timer: number | undefined;
    let attempt = 0;
    const run = async () => {
      try {
        const data = await loadRef.current();
        if (cancelled) return;
        setResult({ key, state: 'ready', data, error: null, message: '' });
        setPrevious(data);
      } catch (err) {
        if (cancelled) return;
        if (isPassing(err)) {
          setResult({ key, state: 'retrying', data: null, error: err, message: retryingMessage(err) });
          timer = window.setTimeout(() => void run(), retryDelayMs(err, attempt++));
        } else {
          setResult({ key, state: 'error', data: null, error: err, message: failureMessage(err) });
        }
      }
    };
    void run();
    return () => {
      cancelled = true;
      window.clearTimeout(timer);
    };
  }, [key]);

  if (result === null || result.key !== key)
    return { state: 'loading', data: null, previous, error: null, message: '' };
  return { state: result.state, data: result.data, previous, error: result.error, message: result.message };
}
