// The board: a form to post an item (logged in), a search box, and the items newest
// first, a page at a time ("Load more" follows next_cursor). The search text is
// sent once typing pauses and kept in the URL (/board?q=...), so Back from an item
// returns to the same search. All user text is rendered as text. While the live
// connection is up, items others post appear at the top of the unfiltered list and
// deleted ones disappear, without a reload.
import { useEffect, useRef, useState, type FormEvent } from 'react';
import { ApiError, describeError } from './api';
import { useAuth } from './auth';
import {
  BODY_MAX,
  countChars,
  createItem,
  fetchItems,
  SEARCH_MAX,
  TITLE_MAX,
  type Item,
  type ItemPage,
  type ItemSummary,
  parseItemSummary,
} from './board';
import { DeleteItem } from './DeleteItem';
import { useLiveChannel, type LiveEvent } from './live';
import { isPassing, retryDelayMs, retryingMessage, useRetryingLoad } from './retry';
import { Link, navigate, useLocation } from './router';
import { CharCount, Time, useTitle } from './ui';

/** Pause after the last keystroke before the search is sent. */
const SEARCH_DEBOUNCE_MS = 300;

function boardUrl(q: string): string {
  return q === '' ? '/board' : `/board?${new URLSearchParams({ q }).toString()}`;
}

function CreateForm({ onCreated }: { onCreated: (item: Item) => void }) {
  const auth = useAuth();
  const [title, setTitle] = useState('');
  const [body, setBody] = useState('');
  const [pending, setPending] = useState(false);
  const [error, setError] = useState('');
  const titleCount = countChars(title);
  const bodyCount = countChars(body);
  const blank = title.trim() === '';
  const tooLong = titleCount > TITLE_MAX || bodyCount > BODY_MAX;

  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    if (pending || blank || tooLong) return;
    setPending(true);
    setError('');
    try {
      const item = await createItem(title, body);
      setTitle('');
      setBody('');
      onCreated(item);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) auth.lost();
      setError(describeError(err));
    } finally {
      setPending(false);
    }
  };

  return (
    <form className="form create" data-testid="create-form" onSubmit={(e) => void submit(e)} noValidate>
      <h2>New item</h2>
      <label className="field">
        <span>Title</span>
        <input
          name="title"
          value={title}
          onChange={(e) => setTitle(e.target.value)}
          required
          aria-invalid={titleCount > TITLE_MAX || undefined}
          aria-describedby="title-count"
          data-testid="create-title"
        />
        <CharCount id="title-count" count={titleCount} max={TITLE_MAX} testId="title-count" />
      </label>
      <label className="field">
        <span>Text</span>
        <textarea
          name="body"
          rows={4}
          value={body}
          onChange={(e) => setBody(e.target.value)}
          aria-invalid={bodyCount > BODY_MAX || undefined}
          aria-describedby="body-count"
          data-testid="create-body"
        />
        <CharCount id="body-count" count={bodyCount} max={BODY_MAX} testId="body-count" />
      </label>
      <p className="error" role="alert" data-testid="create-error">
        {error}
      </p>
      <div className="actions">
        <button type="submit" data-testid="create-submit" disabled={pending || blank || tooLong}>
          {pending ? 'Posting…' : 'Post'}
        </button>
      </div>
    </form>
  );
}

function ItemCard({
  item,
  mine,
  fresh,
  onDeleted,
}: {
  item: ItemSummary;
  mine: boolean;
  fresh: boolean;
  onDeleted: () => void;
}) {
  return (
    <li
      className={fresh ? 'item-card item-live' : 'item-card'}
      data-testid="item-card"
      data-item-id={item.id}
      data-live={fresh || undefined}
    >
      <h3 className="item-card-title">
        <Link to={`/items/${item.id}`} data-testid="item-link">
          {item.title}
        </Link>
      </h3>
      {item.excerpt ? (
        <p className="excerpt" data-testid="item-excerpt">
          {item.excerpt}
        </p>
      ) : null}
      <p className="meta">
        <span data-testid="item-author">{item.author}</span> · <Time ms={item.createdAt} />
      </p>
      {mine ? <DeleteItem id={item.id} title={item.title} onDeleted={onDeleted} /> : null}
    </li>
  );
}

interface More {
  /** The list (search and generation) these pages belong to. */
  key: string;
  items: ItemSummary[];
  nextCursor: string | null;
}

export function BoardPage() {
  const auth = useAuth();
  const { params } = useLocation();
  const urlQ = params.get('q') ?? '';
  const [input, setInput] = useState(urlQ);
  const [q, setQ] = useState(urlQ.trim());
  // Bumped after a post: the list starts again from the newest page.
  const [generation, setGeneration] = useState(0);
  const [more, setMore] = useState<More | null>(null);
  const [moreState, setMoreState] = useState<{ key: string; pending: boolean; message: string } | null>(null);
  const [removed, setRemoved] = useState<ReadonlySet<number>>(new Set());
  const [posted, setPosted] = useState<Item | null>(null);
  useTitle(q ? `Shoal — board: ${q}` : 'Shoal — board');

  // Send the search once typing pauses; keep it in the URL.
  useEffect(() => {
    const timer = window.setTimeout(() => setQ(input.trim()), SEARCH_DEBOUNCE_MS);
    return () => window.clearTimeout(timer);
  }, [input]);
  useEffect(() => navigate(boardUrl(q), { replace: true }), [q]);
  // A navigation to another search (the Board link, Back) wins over the box.
  const lastUrlQ = useRef(urlQ);
  useEffect(() => {
    if (urlQ === lastUrlQ.current) return;
    lastUrlQ.current = urlQ;
    if (urlQ.trim() !== q) {
      setInput(urlQ);
      setQ(urlQ.trim());
    }
  }, [urlQ, q]);

  // Items that arrived live for the list shown (by key): a reload of the list has them.
  const [arrived, setArrived] = useState<{ key: string; items: ItemSummary[] } | null>(null);
  const liveRef = useRef({ key: '', q });
  const onLive = (event: LiveEvent) => {
    if (event.event === 'item_deleted') {
      const id = event.data.id;
      if (typeof id === 'number') setRemoved((prev) => new Set(prev).add(id));
    } else if (event.event === 'item_created') {
      const item = parseItemSummary(event.data.item);
      // A search shows only what matches, which only the server knows.
      if (!item || liveRef.current.q !== '') return;
      const listKey = liveRef.current.key;
      setArrived((prev) => ({ key: listKey, items: [item, ...(prev && prev.key === listKey ? prev.items : [])] }));
    }
  };
  // Null until the live subscription is in place; a new number when events were lost.
  const liveGeneration = useLiveChannel('board', onLive);

  const key = `${generation}\n${q}\n${liveGeneration ?? ''}`;
  liveRef.current = { key, q };
  // The list a pending "Load more" belongs to; another search, a refresh or leaving
  // the page ends its retries.
  const keyRef = useRef(key);
  keyRef.current = key;
  useEffect(
    () => () => {
      keyRef.current = '';
    },
    [],
  );
  const first = useRetryingLoad<{ q: string; page: ItemPage }>(liveGeneration === null ? null : key, async () => ({
    q,
    page: await fetchItems(q, null),
  }));
  // While a new search or a refresh loads, the last list stays on screen, dimmed.
  const shown = first.data ?? first.previous;

  const extra = first.data && more && more.key === key ? more : null;
  const fresh = first.data && arrived && arrived.key === key ? arrived.items : [];
  const freshIds = new Set(fresh.map((item) => item.id));
  const pagesItems = shown ? [...fresh, ...shown.page.items, ...(extra ? extra.items : [])] : [];
  const seen = new Set<number>();
  const items = pagesItems.filter((item) => {
    if (seen.has(item.id) || removed.has(item.id)) return false;
    seen.add(item.id);
    return true;
  });
  const nextCursor = extra ? extra.nextCursor : (first.data?.page.nextCursor ?? null);
  const loadingMore = moreState !== null && moreState.key === key ? moreState : null;

  const loadMore = async () => {
    if (nextCursor === null || loadingMore?.pending) return;
    const mine = key;
    const cursor = nextCursor;
    setMoreState({ key: mine, pending: true, message: '' });
    for (let attempt = 0; ; attempt++) {
      try {
        const page = await fetchItems(q, cursor);
        if (keyRef.current !== mine) return;
        setMore((prev) => ({
          key: mine,
          items: [...(prev && prev.key === mine ? prev.items : []), ...page.items],
          nextCursor: page.nextCursor,
        }));
        setMoreState(null);
        return;
      } catch (err) {
        if (keyRef.current !== mine) return;
        if (!isPassing(err)) {
          setMoreState({ key: mine, pending: false, message: describeError(err) });
          return;
        }
        setMoreState({ key: mine, pending: true, message: retryingMessage(err) });
        await new Promise((resolve) => window.setTimeout(resolve, retryDelayMs(err, attempt)));
        if (keyRef.current !== mine) return;
      }
    }
  };

  const onCreated = (item: Item) => {
    setPosted(item);
    setGeneration((g) => g + 1);
  };
  const onDeleted = (id: number) => {
    setRemoved((prev) => new Set(prev).add(id));
    setPosted((prev) => (prev && prev.id === id ? null : prev));
  };

  const state = first.state;
  const userId = auth.status === 'logged-in' && auth.user ? auth.user.id : null;

  return (
    <main className="card board" data-testid="board" data-state={state} aria-busy={state === 'loading'}>
      <header>
        <h1>Board</h1>
        <p className="lede">What the team posts, newest first.</p>
      </header>

      {auth.status === 'logged-in' ? (
        <CreateForm onCreated={onCreated} />
      ) : auth.status === 'logged-out' ? (
        <p className="note" data-testid="logged-out-note">
          <Link to="/login">Log in</Link> or <Link to="/signup">sign up</Link> to post.
        </p>
      ) : null}
      {posted ? (
        <p className="note posted" role="status" data-testid="posted">
          Posted <Link to={`/items/${posted.id}`}>{posted.title}</Link>.
        </p>
      ) : null}

      <div className="search" role="search">
        <label className="field">
          <span>Search</span>
          <input
            type="search"
            name="q"
            value={input}
            maxLength={SEARCH_MAX}
            onChange={(e) => setInput(e.target.value)}
            placeholder="Words in titles and text"
            data-testid="search"
          />
        </label>
      </div>

      <p className={state === 'retrying' ? 'status retrying' : 'error'} role="status" data-testid="board-status">
        {state === 'retrying' || state === 'error' ? first.message : ''}
      </p>
      {state === 'error' ? (
        <div className="actions">
          <button type="button" className="secondary" data-testid="retry" onClick={() => setGeneration((g) => g + 1)}>
            Try again
          </button>
        </div>
      ) : null}

      {state === 'loading' && !shown ? (
        <p className="muted" data-testid="board-loading">
          Loading…
        </p>
      ) : null}

      {shown ? (
        items.length === 0 ? (
          <p className="empty-state" data-testid="empty" data-q={shown.q} data-stale={!first.data || undefined}>
            {shown.q ? `No items match “${shown.q}”.` : 'No items yet. Be the first to post one.'}
          </p>
        ) : (
          <ul className="item-list" data-testid="item-list" data-q={shown.q} data-stale={!first.data || undefined}>
            {items.map((item) => (
              <ItemCard
                key={item.id}
                item={item}
                mine={userId === item.authorId}
                fresh={freshIds.has(item.id)}
                onDeleted={() => onDeleted(item.id)}
              />
            ))}
          </ul>
        )
      ) : null}

      {first.data && nextCursor !== null ? (
        <div className="actions more">
          <button
            type="button"
            className="secondary"
            data-testid="load-more"
            onClick={() => void loadMore()}
            disabled={loadingMore?.pending}
          >
            {loadingMore?.pending ? 'Loading…' : 'Load more'}
          </button>
          {loadingMore?.message ? (
            <span className="inline-error" role="status" data-testid="load-more-status">
              {loadingMore.message}
            </span>
          ) : null}
        </div>
      ) : null}
    </main>
  );
}
