// The board's API calls (contract: accounts under /api/auth, /api/me, items under
// /api/items). Keeps the session's CSRF token in memory only, sends it as
// X-CSRF-Token on every state-changing call of a logged-in user, and validates
// every reply before the page sees it.
import { ApiError, drain, isObject, readJson, request, type Method } from './api';

/** Limits of the contract, counted in characters (Unicode code points). */
export const TITLE_MAX = 200;
export const BODY_MAX = 10_000;
export const SEARCH_MAX = 100;
export const USERNAME_MIN = 3;
export const USERNAME_MAX = 32;
export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 256;

export interface User {
  id: number;
  username: string;
}

/** An item as the list shows it: `excerpt` is the start of the body. */
export interface ItemSummary {
  id: number;
  title: string;
  excerpt: string;
  author: string;
  authorId: number;
  /** Epoch milliseconds. */
  createdAt: number;
}

/** An item with its whole body and its view count. */
export interface Item {
  id: number;
  title: string;
  body: string;
  author: string;
  authorId: number;
  createdAt: number;
  views: number;
}

export interface ItemPage {
  items: ItemSummary[];
  /** Cursor of the next (older) page, null on the last page. */
  nextCursor: string | null;
}

/** Characters as the server counts them: code points, not UTF-16 units. */
export function countChars(text: string): number {
  return Array.from(text).length;
}

// --- replies --------------------------------------------------------------

function isId(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/** created_at is epoch milliseconds; an ISO date string is accepted too. */
function toTime(value: unknown): number | null {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'string') {
    const ms = Date.parse(value);
    if (!Number.isNaN(ms)) return ms;
  }
  return null;
}

function notUnderstood(what: string): ApiError {
  return new ApiError(200, `The server sent ${what} this page does not understand.`);
}

function toUser(value: unknown): User {
  if (isObject(value) && isId(value.id) && typeof value.username === 'string') {
    return { id: value.id, username: value.username };
  }
  throw notUnderstood('an account reply');
}

function toItemSummary(value: unknown): ItemSummary {
  if (
    isObject(value) &&
    isId(value.id) &&
    typeof value.title === 'string' &&
    typeof value.author === 'string' &&
    isId(value.author_id)
  ) {
    const createdAt = toTime(value.created_at);
    if (createdAt !== null) {
      return {
        id: value.id,
        title: value.title,
        excerpt: typeof value.excerpt === 'string' ? value.excerpt : '',
        author: value.author,
        authorId: value.author_id,
        createdAt,
      };
    }
  }
  throw notUnderstood('an item');
}

/** An item as a list entry (the shape of GET /api/items entries and of live
 *  `item_created` events), or null when it is not one. */
export function parseItemSummary(value: unknown): ItemSummary | null {
  try {
    return toItemSummary(value);
  } catch {
    return null;
  }
}

function toItem(body: unknown): Item {
  const value = isObject(body) ? body.item : undefined;
  if (
    isObject(value) &&
    typeof value.body === 'string' &&
    typeof value.views === 'number' &&
    Number.isInteger(value.views) &&
    value.views >= 0
  ) {
    const summary = toItemSummary(value);
    return {
      id: summary.id,
      title: summary.title,
      body: value.body,
      author: summary.author,
      authorId: summary.authorId,
      createdAt: summary.createdAt,
      views: value.views,
    };
  }
  throw notUnderstood('an item');
}

function toItemPage(body: unknown): ItemPage {
  if (isObject(body) && Array.isArray(body.items)) {
    const next = body.next_cursor;
    let nextCursor: string | null = null;
    if (typeof next === 'string' && next !== '') nextCursor = next;
    else if (typeof next === 'number' && Number.isSafeInteger(next)) nextCursor = String(next);
    else if (next !== null && next !== undefined) throw notUnderstood('a list of items');
    return { items: body.items.map(toItemSummary), nextCursor };
  }
  throw notUnderstood('a list of items');
}

// --- accounts -------------------------------------------------------------

/** The session's CSRF token: memory only, never stored where another script could find it later. */
let csrfToken: string | null = null;

function takeSession(body: unknown): User {
  if (!isObject(body) || typeof body.csrf_token !== 'string' || body.csrf_token === '') {
    throw notUnderstood('an account reply');
  }
  const user = toUser(body.user);
  csrfToken = body.csrf_token;
  return user;
}

/** The logged-in user, or null when logged out (401). Refreshes the CSRF token. */
export async function fetchMe(): Promise<User | null> {
  try {
    return takeSession(await readJson(await request('GET', '/api/me')));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      csrfToken = null;
      return null;
    }
    throw err;
  }
}

/** Creates an account and logs it in. */
export async function signup(username: string, password: string): Promise<User> {
  const res = await request('POST', '/api/auth/signup', { body: { username, password } });
  return takeSession(await readJson(res));
}

/** Logs in (a new session: the old session id stops working). */
export async function login(username: string, password: string): Promise<User> {
  const res = await request('POST', '/api/auth/login', { body: { username, password } });
  return takeSession(await readJson(res));
}

/**
 * Runs `send`, a state-changing call of a logged-in user, with the session's CSRF
 * token (to be sent as X-CSRF-Token). A 403 `csrf` (the token is stale: the session
 * changed in another tab, or the page has none yet) refetches /api/me once and calls
 * `send` once more. Rejects with a 401 ApiError when nobody is logged in, and with
 * whatever else `send` rejected with.
 */
export async function withCsrf<T>(send: (token: string) => Promise<T>): Promise<T> {
  const notLoggedIn = () =>
    new ApiError(401, 'You are not logged in (any more). Log in and try again.', null, 'unauthorized');
  if (csrfToken === null && (await fetchMe()) === null) throw notLoggedIn();
  try {
    return await send(csrfToken ?? '');
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 403 || err.code !== 'csrf') throw err;
  }
  if ((await fetchMe()) === null) throw notLoggedIn();
  return send(csrfToken ?? '');
}

/** A state-changing request() of a logged-in user, with X-CSRF-Token (see withCsrf). */
async function writeAsUser(method: Method, path: string, body?: unknown): Promise<Response> {
  return withCsrf((token) => request(method, path, { body, headers: { 'X-CSRF-Token': token } }));
}

/** Ends the session. Logged out already (401) counts as done. */
export async function logout(): Promise<void> {
  try {
    await drain(await writeAsUser('POST', '/api/auth/logout'));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) throw err;
  } finally {
    // Whatever happened, this page no longer acts for that session.
    csrfToken = null;
  }
}

// --- items ----------------------------------------------------------------

/** One page of items, newest first; `q` searches the text, `cursor` continues a list. */
export async function fetchItems(q: string, cursor: string | null): Promise<ItemPage> {
  const params = new URLSearchParams();
  if (q !== '') params.set('q', q);
  if (cursor !== null) params.set('cursor', cursor);
  const query = params.toString();
  const res = await request('GET', `/api/items${query ? `?${query}` : ''}`);
  return toItemPage(await readJson(res));
}

/** One item with its body; counts one view. */
export async function fetchItem(id: number): Promise<Item> {
  return toItem(await readJson(await request('GET', `/api/items/${id}`)));
}

/** Posts an item as the logged-in user and returns it as stored. */
export async function createItem(title: string, body: string): Promise<Item> {
  return toItem(await readJson(await writeAsUser('POST', '/api/items', { title, body })));
}

/** Deletes one of the logged-in user's items. */
export async function deleteItem(id: number): Promise<void> {
  await drain(await writeAsUser('DELETE', `/api/items/${id}`));
}
