// One item (/items/:id): title, text, author, time, view count and attachments.
// Opening the page counts one view (GET /api/items/:id); the author can delete the
// item and attach files to it from here.
import { ApiError } from './api';
import { Attachments } from './Attachments';
import { useAuth } from './auth';
import { fetchItem, type Item } from './board';
import { DeleteItem } from './DeleteItem';
import { useRetryingLoad } from './retry';
import { Link, navigate } from './router';
import { Time, useTitle } from './ui';

/** The id of an /items/:id path segment, or null when it cannot be one. */
export function parseItemId(segment: string): number | null {
  if (!/^[1-9]\d{0,15}$/.test(segment)) return null;
  const id = Number(segment);
  return Number.isSafeInteger(id) ? id : null;
}

function NotFound() {
  return (
    <>
      <h1>Item not found</h1>
      <p className="note" data-testid="item-missing">
        There is no such item (any more). <Link to="/board">Back to the board</Link>
      </p>
    </>
  );
}

function ItemView({ item }: { item: Item }) {
  const auth = useAuth();
  const mine = auth.status === 'logged-in' && auth.user?.id === item.authorId;
  const views = item.views === 1 ? '1 view' : `${item.views.toLocaleString('en-US')} views`;
  return (
    <article className="item" data-testid="item" data-item-id={item.id}>
      <h1 className="item-title" data-testid="item-title">
        {item.title}
      </h1>
      <p className="meta">
        by <span data-testid="item-author">{item.author}</span> · <Time ms={item.createdAt} testId="item-created" /> ·{' '}
        <span data-testid="item-views" data-views={item.views}>
          {views}
        </span>
      </p>
      {item.body ? (
        <div className="item-body" data-testid="item-body">
          {item.body}
        </div>
      ) : (
        <p className="muted" data-testid="item-body-empty">
          (no text)
        </p>
      )}
      {mine ? <DeleteItem id={item.id} title={item.title} onDeleted={() => navigate('/board')} /> : null}
      <Attachments itemId={item.id} authorId={item.authorId} />
    </article>
  );
}

export function ItemPage({ segment }: { segment: string }) {
  const id = parseItemId(segment);
  // A non-numeric id cannot exist: no request (the server would answer 404 too).
  const loaded = useRetryingLoad<Item | null>(String(id), async () => (id === null ? null : fetchItem(id)));
  const missing =
    (loaded.state === 'ready' && loaded.data === null) ||
    (loaded.state === 'error' && loaded.error instanceof ApiError && loaded.error.status === 404);
  const state = missing ? 'missing' : loaded.state;
  useTitle(loaded.data ? `${loaded.data.title} — Shoal` : 'Shoal — item');

  return (
    <main className="card item-page" data-testid="item-page" data-state={state} aria-busy={state === 'loading'}>
      <p className="crumbs">
        <Link to="/board" data-testid="back">
          ← Board
        </Link>
      </p>
      {missing ? (
        <NotFound />
      ) : loaded.data ? (
        <ItemView item={loaded.data} />
      ) : state === 'loading' ? (
        <p className="muted">Loading…</p>
      ) : null}
      <p className={state === 'retrying' ? 'status retrying' : 'error'} role="status" data-testid="item-status">
        {state === 'retrying' || state === 'error' ? loaded.message : ''}
      </p>
    </main>
  );
}
