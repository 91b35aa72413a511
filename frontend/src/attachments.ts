// Attachments of an item (contract: GET /api/items/:id/attachments, POST
// /api/uploads?item_id=, GET /api/uploads/:id). Replies are validated before the page
// sees them. Uploads go through XMLHttpRequest: it is the one browser API that reports
// how much of a request body has been sent (fetch has no upload progress).
import { ApiError, errorFromBody, isObject, readJson, request } from './api';
import { withCsrf } from './board';

/** An attachment as the page shows it. */
export interface Attachment {
  id: number;
  itemId: number;
  ownerId: number;
  owner: string;
  /** The original file name: data only, always rendered as text. */
  name: string;
  /** The type the server found in the bytes (not the one the browser declared). */
  contentType: string;
  /** Bytes. */
  size: number;
  sha256: string;
  /** Epoch milliseconds. */
  createdAt: number;
  /** Same-origin path of the download. */
  url: string;
}

/** How far an upload's body has been sent. */
export interface UploadProgress {
  loaded: number;
  total: number;
}

export interface UploadOptions {
  /** Aborting it cancels the upload; the promise then rejects with an AbortError. */
  signal?: AbortSignal;
  onProgress?: (progress: UploadProgress) => void;
}

/** Longest file name the server takes, in UTF-8 bytes. */
export const FILE_NAME_MAX_BYTES = 1024;

const DOWNLOAD_PREFIX = '/api/uploads/';
const DOWNLOAD_PATH = /^\/api\/uploads\/[1-9]\d*$/;
// Control characters (C0 and DEL) the server refuses in a file name.
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

function isId(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function notUnderstood(status: number): ApiError {
  return new ApiError(status, 'The server sent an attachment this page does not understand.');
}

/**
 * The download path of an attachment: the server's `url` when it is one of ours,
 * otherwise the path the contract gives for the id (a reply cannot make the page link
 * elsewhere).
 */
function downloadPath(id: number, url: unknown): string {
  if (typeof url === 'string' && DOWNLOAD_PATH.test(url)) return url;
  return `${DOWNLOAD_PREFIX}${id}`;
}

function toAttachment(value: unknown, status: number): Attachment {
  if (
    isObject(value) &&
    isId(value.id) &&
    isId(value.item_id) &&
    typeof value.name === 'string' &&
    isCount(value.size) &&
    typeof value.created_at === 'number' &&
    Number.isFinite(value.created_at)
  ) {
    return {
      id: value.id,
      itemId: value.item_id,
      ownerId: isId(value.owner_id) ? value.owner_id : 0,
      owner: typeof value.owner === 'string' ? value.owner : '',
      name: value.name,
      contentType:
        typeof value.content_type === 'string' && value.content_type !== ''
          ? value.content_type
          : 'application/octet-stream',
      size: value.size,
      sha256: typeof value.sha256 === 'string' ? value.sha256 : '',
      createdAt: value.created_at,
      url: downloadPath(value.id, value.url),
    };
  }
  throw notUnderstood(status);
}

/** An attachment from a live `attachment_created` event (the list's JSON), or null
 *  when it is not one. */
export function parseAttachment(value: unknown): Attachment | null {
  try {
    return toAttachment(value, 200);
  } catch {
    return null;
  }
}

/** The attachments of an item, oldest first (an unknown item has none). */
export async function fetchAttachments(itemId: number, signal?: AbortSignal): Promise<Attachment[]> {
  const body = await readJson(await request('GET', `/api/items/${itemId}/attachments`, { signal }));
  if (isObject(body) && Array.isArray(body.attachments)) {
    return body.attachments.map((a) => toAttachment(a, 200));
  }
  throw notUnderstood(200);
}

/** Bytes of `text` in UTF-8. */
function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

/**
 * The X-File-Name header for `name` (percent-encoded UTF-8), or an ApiError when the
 * server would refuse the name: better said before the bytes are sent than after.
 */
function fileNameHeader(name: string): string {
  const refuse = (why: string) =>
    new ApiError(400, `The file name ${why}. Rename the file and try again.`, null, 'invalid');
  if (name === '') throw refuse('is empty');
  if (CONTROL_CHARS.test(name)) throw refuse('contains control characters');
  let encoded: string;
  try {
    encoded = encodeURIComponent(name);
  } catch {
    throw refuse('is not valid Unicode'); // a lone surrogate
  }
  if (utf8Length(name) > FILE_NAME_MAX_BYTES) throw refuse(`is longer than ${FILE_NAME_MAX_BYTES} bytes`);
  return encoded;
}

function abortError(): DOMException {
  return new DOMException('The upload was cancelled.', 'AbortError');
}

/** True for the rejection of an upload that was cancelled. */
export function isAbort(err: unknown): boolean {
  return err instanceof DOMException && err.name === 'AbortError';
}

/** One POST of the file with `token` as X-CSRF-Token. */
function sendOnce(itemId: number, file: File, header: string, token: string, options: UploadOptions) {
  const { signal, onProgress } = options;
  return new Promise<Attachment>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError());
      return;
    }
    const xhr = new XMLHttpRequest();
    const onAbort = () => xhr.abort();
    const settle = (finish: () => void) => {
      signal?.removeEventListener('abort', onAbort);
      finish();
    };
    xhr.open('POST', `/api/uploads?item_id=${itemId}`);
    xhr.responseType = 'text';
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
    xhr.setRequestHeader('X-File-Name', header);
    xhr.setRequestHeader('X-CSRF-Token', token);
    xhr.upload.onprogress = (event) => {
      onProgress?.({ loaded: event.loaded, total: event.lengthComputable ? event.total : file.size });
    };
    xhr.onload = () =>
      settle(() => {
        let body: unknown;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = undefined;
        }
        if (xhr.status >= 200 && xhr.status < 300) {
          try {
            resolve(toAttachment(isObject(body) ? body.attachment : undefined, xhr.status));
          } catch (err) {
            reject(err);
          }
          return;
        }
        reject(errorFromBody(xhr.status, xhr.statusText, xhr.getResponseHeader('Retry-After'), body));
      });
    xhr.onerror = () =>
      settle(() => reject(new ApiError(0, 'The connection broke off before the server answered.')));
    xhr.onabort = () => settle(() => reject(abortError()));
    signal?.addEventListener('abort', onAbort, { once: true });
    xhr.send(file);
  });
}

/**
 * Uploads `file` as an attachment of item `itemId` (the logged-in user's). Resolves
 * with the attachment as stored; rejects with an ApiError (status 0 when the
 * connection failed) or, when `signal` aborted it, with an AbortError. Never retried
 * by itself, except once after a stale CSRF token (nothing is stored then).
 */
export async function uploadFile(itemId: number, file: File, options: UploadOptions = {}): Promise<Attachment> {
  const header = fileNameHeader(file.name);
  return withCsrf((token) => sendOnce(itemId, file, header, token, options));
}
