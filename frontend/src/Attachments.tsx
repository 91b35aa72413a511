// The attachments of an item, on its page: name, size, type and a download link for
// each, and for the item's author a file picker that uploads the chosen files one
// after another with a progress bar and a Cancel button. File names are text, never
// markup; a download is always a same-origin link the server answers as an attachment.
// Files others attach while the page is open arrive live and join the list.
import { useEffect, useRef, useState, type FormEvent } from 'react';
import { ApiError, describeError } from './api';
import { fetchAttachments, isAbort, uploadFile, type Attachment } from './attachments';
import { useAuth } from './auth';
import { useRetryingLoad } from './retry';
import { Link } from './router';
import { formatBytes, Time } from './ui';

/** The server's list plus what this page attached since (a read that lags behind an
 *  upload would miss it); the server's copy wins. */
function merge(listed: Attachment[], attached: Attachment[]): Attachment[] {
  const byId = new Map<number, Attachment>();
  for (const a of [...listed, ...attached]) if (!byId.has(a.id)) byId.set(a.id, a);
  return [...byId.values()].sort((a, b) => a.createdAt - b.createdAt || a.id - b.id);
}

function AttachmentRow({ attachment }: { attachment: Attachment }) {
  const { id, name, size, contentType, url, createdAt } = attachment;
  return (
    <li className="attachment" data-testid="attachment" data-attachment-id={id} data-size={size}>
      <span className="attachment-name" data-testid="attachment-name">
        {name}
      </span>
      <span className="meta">
        <span data-testid="attachment-size" title={`${size.toLocaleString('en-US')} bytes`}>
          {formatBytes(size)}
        </span>{' '}
        · <span data-testid="attachment-type">{contentType}</span> · <Time ms={createdAt} />
      </span>
      <a
        className="attachment-download"
        href={url}
        download={name}
        data-testid="attachment-download"
        aria-label={`Download “${name}” (${formatBytes(size)})`}
      >
        Download
      </a>
    </li>
  );
}

/** The server's own words, when it sent an error body (it then names a code). */
function serverSays(err: ApiError): string {
  return err.code !== null ? ` The server says: “${err.message}”.` : '';
}

/** Why an upload failed, in words for the person who chose the file. */
function uploadFailure(err: unknown, file: File): string {
  if (!(err instanceof ApiError)) return describeError(err);
  switch (err.status) {
    case 0:
      return 'The connection broke off during the upload. Check the connection and try again.';
    case 401:
      return 'You are not logged in (any more). Log in and try again.';
    case 404:
      return 'The item does not exist (any more).';
    case 413:
      return err.code === 'quota_exceeded'
        ? `It would go over your storage quota.${serverSays(err)}`
        : `Too large.${serverSays(err)}`;
    case 415:
      return (
        `The content does not match its type (${file.type || 'none given'}). ` +
        `Check that it is the file you meant.${serverSays(err)}`
      );
    case 503: {
      const wait = err.retryAfter;
      const when = wait === null ? 'in a moment' : `in ${wait} ${wait === 1 ? 'second' : 'seconds'}`;
      return `The upload service is unavailable. Try again ${when}.`;
    }
    case 504:
      return 'The upload took too long and was stopped. Try again later.';
    default:
      return describeError(err);
  }
}

type Outcome = 'attached' | 'failed' | 'cancelled';

interface Result {
  key: number;
  name: string;
  outcome: Outcome;
  text: string;
}

interface Current {
  name: string;
  index: number;
  count: number;
  loaded: number;
  total: number;
}

function ProgressLine({ current, onCancel }: { current: Current; onCancel: () => void }) {
  const { name, index, count, loaded, total } = current;
  const percent = total > 0 ? Math.floor((loaded * 100) / total) : 0;
  const sent = total > 0 && loaded >= total;
  return (
    <div className="upload-progress" data-testid="upload-status">
      <label htmlFor="upload-progress" className="upload-progress-label">
        Uploading <span className="upload-progress-name">“{name}”</span>
        {count > 1 ? ` (${index + 1} of ${count})` : ''}
      </label>
      <div className="upload-progress-bar">
        <progress
          id="upload-progress"
          value={loaded}
          max={Math.max(total, 1)}
          aria-valuetext={`${percent}%, ${formatBytes(loaded)} of ${formatBytes(total)}`}
          data-testid="upload-progress"
          data-loaded={loaded}
          data-total={total}
        />
        <button
          type="button"
          className="secondary small"
          onClick={onCancel}
          data-testid="upload-cancel"
          aria-label={count > 1 ? 'Cancel the remaining uploads' : `Cancel the upload of “${name}”`}
        >
          Cancel
        </button>
      </div>
      <span className="upload-progress-text" data-testid="upload-progress-text">
        {sent
          ? `${formatBytes(total)} sent; waiting for the server…`
          : `${percent}% — ${formatBytes(loaded)} of ${formatBytes(total)}`}
      </span>
    </div>
  );
}

/** The author's file picker: uploads the chosen files one after another. */
function UploadForm({ itemId, onAttached }: { itemId: number; onAttached: (a: Attachment) => void }) {
  const auth = useAuth();
  const [files, setFiles] = useState<File[]>([]);
  const [current, setCurrent] = useState<Current | null>(null);
  const [results, setResults] = useState<Result[]>([]);
  // A new input after each batch: the only way to clear a file input.
  const [inputKey, setInputKey] = useState(0);
  const controller = useRef<AbortController | null>(null);
  const onAttachedRef = useRef(onAttached);
  onAttachedRef.current = onAttached;

  // Leaving the page cancels what is still being sent.
  useEffect(() => () => controller.current?.abort(), []);

  const uploading = current !== null;

  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    if (uploading || files.length === 0) return;
    const batch = files;
    const mine = new AbortController();
    controller.current = mine;
    const done: Result[] = [];
    const note = (file: File, outcome: Outcome, text: string) => {
      done.push({ key: done.length, name: file.name, outcome, text });
      setResults([...done]);
    };
    setResults([]);
    let lost = false;
    for (let index = 0; index < batch.length; index++) {
      const file = batch[index];
      if (mine.signal.aborted) {
        note(file, 'cancelled', 'Cancelled: not attached.');
        continue;
      }
      setCurrent({ name: file.name, index, count: batch.length, loaded: 0, total: file.size });
      try {
        const attachment = await uploadFile(itemId, file, {
          signal: mine.signal,
          onProgress: ({ loaded, total }) =>
            setCurrent((c) => (c && c.index === index ? { ...c, loaded, total } : c)),
        });
        note(file, 'attached', `Attached (${formatBytes(attachment.size)}, ${attachment.contentType}).`);
        onAttachedRef.current(attachment);
      } catch (err) {
        if (isAbort(err)) {
          note(file, 'cancelled', 'Cancelled: not attached.');
        } else {
          note(file, 'failed', `Not attached. ${uploadFailure(err, file)}`);
          if (err instanceof ApiError && err.status === 401) {
            // The session is gone: the rest would fail the same way.
            lost = true;
            mine.abort();
          }
        }
      }
    }
    if (controller.current === mine) controller.current = null;
    setCurrent(null);
    setFiles([]);
    setInputKey((k) => k + 1);
    if (lost) auth.lost();
  };

  return (
    <form className="form upload-form" data-testid="upload-form" onSubmit={(e) => void submit(e)} noValidate>
      <h3>Attach files</h3>
      <div className="field">
        <label htmlFor="upload-input">Files to attach</label>
        <input
          key={inputKey}
          id="upload-input"
          type="file"
          multiple
          disabled={uploading}
          onChange={(e) => setFiles(e.target.files ? Array.from(e.target.files) : [])}
          aria-describedby="upload-hint"
          data-testid="upload-input"
        />
        <small id="upload-hint" className="hint">
          Several files are sent one after another. Images, PDF, ZIP and text must be what their type says.
        </small>
      </div>
      <div className="actions">
        <button type="submit" disabled={uploading || files.length === 0} data-testid="upload-submit">
          {uploading ? 'Attaching…' : files.length > 1 ? `Attach ${files.length} files` : 'Attach'}
        </button>
      </div>
      {current ? <ProgressLine current={current} onCancel={() => controller.current?.abort()} /> : null}
      <ul className="upload-results" aria-live="polite" data-testid="upload-results">
        {results.map((r) => (
          <li key={r.key} className={`upload-result ${r.outcome}`} data-testid="upload-result" data-outcome={r.outcome}>
            <span className="upload-result-name" data-testid="upload-result-name">
              “{r.name}”
            </span>{' '}
            <span data-testid="upload-result-text">{r.text}</span>
          </li>
        ))}
      </ul>
    </form>
  );
}

interface ListProps {
  itemId: number;
  userId: number;
  mine: boolean;
  arrived: Attachment[];
  liveGeneration: number | null;
}

function AttachmentList({ itemId, userId, mine, arrived, liveGeneration }: ListProps) {
  const auth = useAuth();
  // Bumped after each upload and by Try again: the list is read anew.
  const [generation, setGeneration] = useState(0);
  const [attached, setAttached] = useState<Attachment[]>([]);
  const loaded = useRetryingLoad(
    liveGeneration === null ? null : `${itemId}\n${userId}\n${generation}\n${liveGeneration}`,
    () => fetchAttachments(itemId),
  );
  const shown = loaded.data ?? loaded.previous;
  const state = loaded.state;
  const { lost } = auth;

  useEffect(() => {
    if (loaded.error instanceof ApiError && loaded.error.status === 401) lost();
  }, [loaded.error, lost]);

  const onAttached = (a: Attachment) => {
    // Shown at once, whatever a lagging read may say; then the list is read anew.
    setAttached((prev) => [...prev, a]);
    setGeneration((g) => g + 1);
  };

  const extra = [...attached, ...arrived.filter((a) => a.itemId === itemId)];
  const list = shown ? merge(shown, extra) : extra.length > 0 ? merge([], extra) : null;
  return (
    <div className="attachments-body" data-testid="attachments-body" data-state={state} aria-busy={state === 'loading'}>
      <p className={state === 'retrying' ? 'status retrying' : 'error'} role="status" data-testid="attachments-status">
        {state === 'retrying' || state === 'error' ? loaded.message : ''}
      </p>
      {state === 'error' ? (
        <div className="actions">
          <button
            type="button"
            className="secondary small"
            data-testid="attachments-retry"
            onClick={() => setGeneration((g) => g + 1)}
          >
            Try again
          </button>
        </div>
      ) : null}
      {list === null ? (
        state === 'loading' ? (
          <p className="muted">Loading…</p>
        ) : null
      ) : list.length === 0 ? (
        <p className="muted" data-testid="attachments-empty" data-stale={!loaded.data || undefined}>
          No attachments.
        </p>
      ) : (
        <ul className="attachment-list" data-testid="attachment-list" data-stale={!loaded.data || undefined}>
          {list.map((a) => (
            <AttachmentRow key={a.id} attachment={a} />
          ))}
        </ul>
      )}
      {mine ? <UploadForm itemId={itemId} onAttached={onAttached} /> : null}
    </div>
  );
}

interface AttachmentsProps {
  itemId: number;
  authorId: number;
  /** Attachments that arrived live (attachment_created), shown with the list. */
  arrived?: Attachment[];
  /** From useLiveChannel: null = wait before reading the list; a change = read it again. */
  liveGeneration?: number | null;
  /** The item is gone: no more uploads. */
  closed?: boolean;
}

/** The attachments section of item `itemId`; `authorId` may attach files to it. */
export function Attachments({ itemId, authorId, arrived = [], liveGeneration = 0, closed = false }: AttachmentsProps) {
  const auth = useAuth();
  const userId = auth.status === 'logged-in' && auth.user ? auth.user.id : null;
  return (
    <section className="attachments" aria-labelledby="attachments-heading" data-testid="attachments">
      <h2 id="attachments-heading">Attachments</h2>
      {userId !== null ? (
        <AttachmentList
          key={userId}
          itemId={itemId}
          userId={userId}
          mine={userId === authorId && !closed}
          arrived={arrived}
          liveGeneration={liveGeneration}
        />
      ) : auth.status === 'logged-out' ? (
        <p className="note" data-testid="attachments-logged-out">
          <Link to="/login">Log in</Link> to see the attachments.
        </p>
      ) : (
        <p className="muted">Loading…</p>
      )}
    </section>
  );
}
