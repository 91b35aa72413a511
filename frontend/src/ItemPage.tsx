// One item (/items/:id): title, text, author, time, view count and attachments.
// Opening the page counts one view (GET /api/items/:id); the author can delete the
// item and attach files to it from here. While the live connection is up (channel
// item:<id>) the view count follows other readers, files others attach appear, and
// a deletion elsewhere is said on the page.
import { useState } from 'react';
import { ApiError } from './api';
import { parseAttachment, type Attachment } from './attachments';
import { Attachments } from './Attachments';
import { useAuth } from './auth';
import { fetchItem, type Item } from './board';
import { DeleteItem } from './DeleteItem';
import { useLiveChannel, type LiveEvent } from './live';
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

/** What arrived live for the item since the page opened. */
interface LiveItem {
  /** Highest view count an event announced (0: none yet). */
  views: number;
  deleted: boolean;
  attachments: Attachment[];
  /** From useLiveChannel (null: wait before reading the attachments). */
  generation: number | null;
}

function ItemView({ item, live }: { item: Item; live: LiveItem }) {
  const auth = useAuth();
  const mine = auth.status === 'logged-in' && auth.user?.id === item.authorId;
  // Counts only grow: a late event or a late answer cannot make the number go back.
  const count = Math.max(item.views, live.views);
  const views = count === 1 ? '1 view' : `${count.toLocaleString('en-US')} views`;
  return (
    <article className="item" data-testid="item" data-item-id={item.id} data-deleted={live.deleted || undefined}>
      {live.deleted ? (
        <p className="item-deleted-notice" role="alert" data-testid="item-deleted">
          This item has just been deleted. <Link to="/board">Back to the board</Link>
        </p>
      ) : null}
      <h1 className="item-title" data-testid="item-title">
        {item.title}
      </h1>
      <p className="meta">
        by <span data-testid="item-author">{item.author}</span> · <Time ms={item.createdAt} testId="item-created" /> ·{' '}
        <span data-testid="item-views" data-views={count}>
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
      {mine && !live.deleted ? (
        <DeleteItem id={item.id} title={item.title} onDeleted={() => navigate('/board')} />
      ) : null}
      <Attachments
        itemId={item.id}
        authorId={item.authorId}
        arrived={live.attachments}
        liveGeneration={live.generation}
        closed={live.deleted}
      />
    </article>
  );
}

export function ItemPage({ segment }: { segment: string }) {
  const id = parseItemId(segment);
  const [events, setEvents] = useState<Omit<LiveItem, 'generation'>>({ views: 0, deleted: false, attachments: [] });
  const onLive = (event: LiveEvent) => {
    const { data } = event;
    if (data.item_id !== undefined && data.item_id !== id) return;
    if (event.event === 'views' && typeof data.views === 'number') {
      const views = data.views;
      setEvents((prev) => (views > prev.views ? { ...prev, views } : prev));
    } else if (event.event === 'item_deleted' && data.id === id) {
      setEvents((prev) => ({ ...prev, deleted: true }));
    } else if (event.event === 'attachment_created') {
      const attachment = parseAttachment(data.attachment);
      if (attachment && attachment.itemId === id) {
        setEvents((prev) => ({ ...prev, attachments: [...prev.attachments, attachment] }));
      }
    }
  };
  const generation = useLiveChannel(id === null ? null : `item:${id}`, onLive);
  // A non-numeric id cannot exist: no request (the server would answer 404 too).
  // The item itself is read once, not again after lost events: every read counts a view.
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
        <ItemView item={loaded.data} live={{ ...events, generation }} />
      ) : state === 'loading' ? (
        <p className="muted">Loading…</p>
      ) : null}
      <p className={state === 'retrying' ? 'status retrying' : 'error'} role="status" data-testid="item-status">
        {state === 'retrying' || state === 'error' ? loaded.message : ''}
      </p>
    </main>
  );
}
