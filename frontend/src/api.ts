// Shoal API client: the one place that talks HTTP. It validates replies and turns
// every failure into an ApiError with a message fit for people. This file has the
// shared request code, the session counter and the cluster view; board.ts builds the
// board's calls (accounts, items, CSRF) on top of request().

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

/** A failed call: HTTP status (0 when the server was not reached), the server's error
 *  code (`invalid`, `csrf`, … or null when it sent none) and its message. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string | null;
  /** Seconds to wait before retrying, from a 503's Retry-After; null when absent. */
  readonly retryAfter: number | null;

  constructor(status: number, message: string, retryAfter: number | null = null, code: string | null = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

const SESSION_PATH = '/api/session';
const CLUSTER_PATH = '/api/cluster';

type Json = Record<string, unknown>;

export function isObject(value: unknown): value is Json {
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

/**
 * The ApiError for an error answer whose body was already read (`body` is the parsed
 * JSON, or undefined when it was not JSON). Two body shapes are understood:
 * `{"error": {"code", "message"}}` and the older `{"error": "<code>", "message"}`.
 */
export function errorFromBody(
  status: number,
  statusText: string,
  retryAfterHeader: string | null,
  body: unknown,
): ApiError {
  let message = `The server answered ${status}${statusText ? ` ${statusText}` : ''}.`;
  let code: string | null = null;
  if (isObject(body)) {
    const detail = isObject(body.error) ? body.error : body;
    if (typeof detail.message === 'string' && detail.message !== '') message = detail.message;
    if (typeof detail.code === 'string') code = detail.code;
    else if (typeof body.error === 'string') code = body.error;
  }
  return new ApiError(status, message, parseRetryAfter(retryAfterHeader), code);
}

/** Reads the error body of `res` (see errorFromBody). */
async function errorFromResponse(res: Response): Promise<ApiError> {
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    // Not JSON (a proxy's error page, an empty body): keep the generic message.
  }
  return errorFromBody(res.status, res.statusText, res.headers.get('Retry-After'), body);
}

export type Method = 'GET' | 'POST' | 'DELETE';

export interface RequestOptions {
  /** Sent as JSON. */
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/**
 * One same-origin call. Resolves with a 2xx response (body unread); rejects with an
 * ApiError for any other status or when the server cannot be reached, or with the
 * abort error when `signal` aborted it.
 */
export async function request(method: Method, path: string, options: RequestOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json', ...options.headers };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      credentials: 'same-origin',
      // Reads count views and depend on who is logged in: no cache may answer them.
      cache: 'no-store',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: options.signal,
    });
  } catch (err) {
    if (options.signal?.aborted) throw err;
    throw new ApiError(0, 'The server could not be reached. Check the connection and try again.');
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res;
}

/** Reads and drops a body nobody needs: Chromium reports an unread response as an aborted request. */
export async function drain(res: Response): Promise<void> {
  await res.arrayBuffer().catch(() => undefined);
}

export async function readJson(res: Response): Promise<unknown> {
  try {
    return await res.json();
  } catch {
    throw new ApiError(res.status, 'The server sent a reply that is not JSON.');
  }
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
  const res = await request('GET', SESSION_PATH);
  return toSessionInfo(await readJson(res));
}

/** Ends the caller's session; the next fetchSession() starts a new one. */
export async function forgetSession(): Promise<void> {
  await drain(await request('DELETE', SESSION_PATH));
}

/** Instance states the cluster view knows; anything else is shown as sent, uncoloured. */
export const INSTANCE_STATES = ['up', 'busy', 'draining', 'dead'] as const;
export type KnownInstanceState = (typeof INSTANCE_STATES)[number];

/** One service instance as `GET /api/cluster` lists it. Fields the server left out are null. */
export interface ClusterInstance {
  service: string;
  instance: string;
  /** `up`, `busy`, `draining` or `dead` (a newer server may send another word). */
  state: string;
  address: string | null;
  version: string | null;
  uptimeS: number | null;
  heartbeatAgeMs: number | null;
  inFlight: number | null;
  rps: number | null;
}

/** A health (registry) endpoint the edge talks to, and whether it answers. */
export interface HealthEndpoint {
  /** Instance name, when the edge knows it (it may list only the address). */
  instance: string | null;
  address: string | null;
  reachable: boolean;
}

/** The cluster as one edge sees it (`GET /api/cluster`). */
export interface ClusterInfo {
  /** When the edge built the answer, epoch milliseconds (the edge's clock). */
  generatedAt: number | null;
  instances: ClusterInstance[];
  health: HealthEndpoint[];
}

function optionalString(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

function optionalNumber(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function toClusterInstance(value: unknown): ClusterInstance | null {
  if (
    !isObject(value) ||
    typeof value.service !== 'string' ||
    value.service === '' ||
    typeof value.instance !== 'string' ||
    value.instance === '' ||
    typeof value.state !== 'string' ||
    value.state === ''
  ) {
    return null;
  }
  return {
    service: value.service,
    instance: value.instance,
    state: value.state,
    address: optionalString(value.address),
    version: optionalString(value.version),
    uptimeS: optionalNumber(value.uptime_s),
    heartbeatAgeMs: optionalNumber(value.heartbeat_age_ms),
    inFlight: optionalNumber(value.in_flight),
    rps: optionalNumber(value.rps),
  };
}

function toHealthEndpoint(value: unknown): HealthEndpoint | null {
  if (!isObject(value) || typeof value.reachable !== 'boolean') return null;
  const instance = optionalString(value.instance);
  const address = optionalString(value.address);
  if (!instance && !address) return null;
  return { instance, address, reachable: value.reachable };
}

function toClusterInfo(body: unknown): ClusterInfo {
  if (isObject(body) && Array.isArray(body.instances)) {
    const instances = body.instances.map(toClusterInstance);
    // One malformed instance makes the whole reply suspect: the page keeps the last
    // good table and says so. The health list is a footnote: odd entries are dropped.
    if (instances.every((i) => i !== null)) {
      const health = Array.isArray(body.health) ? body.health.map(toHealthEndpoint) : [];
      return {
        generatedAt: optionalNumber(body.generated_at),
        instances,
        health: health.filter((h) => h !== null),
      };
    }
  }
  throw new ApiError(200, 'The server sent a cluster reply this page does not understand.');
}

/** The service instances the edge knows of, with their state and load. Counts no view. */
export async function fetchCluster(signal?: AbortSignal): Promise<ClusterInfo> {
  const res = await request('GET', CLUSTER_PATH, { signal });
  return toClusterInfo(await readJson(res));
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
