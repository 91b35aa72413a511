// Shoal API client for the session counter: one place that talks HTTP, validates
// replies and turns every failure into an ApiError with a message fit for people.

/** A session as the page shows it (`GET /api/session`). */
export interface SessionInfo {
  views: number;
  /** Session creation time, epoch milliseconds. */
  createdAt: number;
  /** Edge instance that answered the request. */
  edge: string;
  /** Session-service instance that answered the edge. */
  sessionInstance: string;
}

/** A failed call: HTTP status (0 when the server was not reached) and the server's message. */
export class ApiError extends Error {
  readonly status: number;
  /** Seconds to wait before retrying, from a 503's Retry-After; null when absent. */
  readonly retryAfter: number | null;

  constructor(status: number, message: string, retryAfter: number | null = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

const SESSION_PATH = '/api/session';

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Retry-After is either delta-seconds or an HTTP date (RFC 9110 §10.2.3). */
function parseRetryAfter(header: string | null): number | null {
  if (header === null) return null;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

async function errorFromResponse(res: Response): Promise<ApiError> {
  const retryAfter = parseRetryAfter(res.headers.get('Retry-After'));
  let message = `The server answered ${res.status}${res.statusText ? ` ${res.statusText}` : ''}.`;
  try {
    const body: unknown = await res.json();
    if (isObject(body) && typeof body.message === 'string' && body.message !== '') {
      message = body.message;
    }
  } catch {
    // Not JSON (a proxy's error page, an empty body): keep the generic message.
  }
  return new ApiError(res.status, message, retryAfter);
}

async function send(method: 'GET' | 'DELETE', path: string): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      credentials: 'same-origin',
      // Every GET counts a view, so no cache may answer it.
      cache: 'no-store',
      headers: { Accept: 'application/json' },
    });
  } catch {
    throw new ApiError(0, 'The server could not be reached. Check the connection and try again.');
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res;
}

function toSessionInfo(body: unknown): SessionInfo {
  if (
    isObject(body) &&
    typeof body.views === 'number' &&
    Number.isInteger(body.views) &&
    body.views >= 0 &&
    typeof body.created_at === 'number' &&
    Number.isFinite(body.created_at) &&
    typeof body.edge === 'string' &&
    typeof body.session_instance === 'string'
  ) {
    return {
      views: body.views,
      createdAt: body.created_at,
      edge: body.edge,
      sessionInstance: body.session_instance,
    };
  }
  throw new ApiError(200, 'The server sent a session reply this page does not understand.');
}

/** Counts one view of the caller's session (creating it if needed) and returns it. */
export async function fetchSession(): Promise<SessionInfo> {
  const res = await send('GET', SESSION_PATH);
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    throw new ApiError(res.status, 'The server sent a reply that is not JSON.');
  }
  return toSessionInfo(body);
}

/** Ends the caller's session; the next fetchSession() starts a new one. */
export async function forgetSession(): Promise<void> {
  const res = await send('DELETE', SESSION_PATH);
  // Drain the (empty) body: Chromium reports an unread response as an aborted request.
  await res.arrayBuffer().catch(() => undefined);
}

/** The text the page shows for a failure, including when to retry if the server said. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.retryAfter !== null) {
      const unit = error.retryAfter === 1 ? 'second' : 'seconds';
      return `${error.message} Try again in ${error.retryAfter} ${unit}.`;
    }
    return error.message;
  }
  return 'Something went wrong. Try again.';
}
