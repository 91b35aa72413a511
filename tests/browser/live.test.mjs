// End-to-end test of live updates through real browsers: Debian's Chromium driven by
// playwright-core, against a running Shoal stack at SHOAL_URL with two edges behind
// HAProxy (deploy/local/up). Two users in two separate browser contexts: what A
// posts, attaches and deletes reaches B's board and item page over B's WebSocket
// without a reload, and so do the item's view count and B's own session counter.
// With SHOAL_RUN_DIR (the local stack's run dir) a second test SIGKILLs the edge B's
// socket is on (its pid from <run dir>/pids/<edge>.pid), has A post while B is cut
// off, and checks that B comes back live on an edge and shows the new item by
// resuming from its last offset, without loading the list again; a third stops Redis
// (the supervisor starts it again) and checks that B's board stays live and shows
// A's next post without a reload or a refetch (the history kept its epoch). Another test
// drives the page's client against an edge played from inside the browser
// (page.routeWebSocket): resume with `since`, duplicates dropped, a reload after
// lost history, session end; it is skipped with SHOAL_BROWSER_SKIP_STUBBED=1.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  assertNoProblems,
  CSRF_TOKEN_LENGTH,
  LIVE_PATH,
  liveIndicator,
  LOGGED_OUT_ME,
  navigate,
  openWatchedPage,
  pathOf,
  readPage,
  screenshot,
  STEP_TIMEOUT_MS,
  stepWaits,
  STUBBED_TEST,
  TEST_TIMEOUT_MS,
  textOf,
  uniqueWord,
  url,
  useBrowser,
  watchForProblems,
} from './browser.mjs';

const getBrowser = useBrowser();

/** The local stack's run dir (deploy/local): where pids/<edge>.pid names each edge's process. */
const RUN_DIR = process.env.SHOAL_RUN_DIR;
const ITEMS_PATH = '/api/items';

/** What a page shows now, for failure messages. */
function describePage(page) {
  return readPage(page, () => {
    const main = document.querySelector('main');
    const live = document.querySelector('[data-testid="live-indicator"]');
    const cards = [...document.querySelectorAll('[data-testid="item-card"]')].map((c) => c.dataset.itemId);
    const rows = [...document.querySelectorAll('[data-testid="attachment"]')].map((r) => r.dataset.attachmentId);
    const views = document.querySelector('[data-testid="item-views"]')?.dataset.views;
    return (
      `${location.pathname} main=${main?.dataset.testid}/${main?.dataset.state} ` +
      `live=${live?.dataset.state}/${live?.dataset.edge ?? '-'}/[${live?.dataset.channels ?? ''}] ` +
      `cards=[${cards.slice(0, 8)}] attachments=[${rows}] views=${views ?? '-'}`
    );
  });
}

const { waitFor, waitForAccount } = stepWaits(describePage);

/** Waits until `check` (run in the page with `arg`) is true, or fails with what the page shows. */
async function waitUntil(page, step, check, arg) {
  try {
    await page.waitForFunction(check, arg, { timeout: STEP_TIMEOUT_MS, polling: 'raf' });
  } catch (err) {
    assert.fail(`${step}: ${err.message.split('\n')[0]}; page: ${await describePage(page)}`);
  }
}

/** Waits until `check()` (in this process) is true: every 20 ms, at most the step limit. */
async function until(check, step, describe = async () => '') {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`${step}: not within ${STEP_TIMEOUT_MS} ms ${await describe()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Waits until the board shows a fresh, unfiltered list (or its empty state). */
async function waitForBoard(page, step) {
  await waitFor(
    page,
    page.locator(
      'main[data-testid="board"][data-state="ready"] :is([data-testid="item-list"], [data-testid="empty"])[data-q=""]:not([data-stale])',
    ),
    step,
  );
}

async function waitForLive(page, channel, step) {
  await waitFor(page, liveIndicator(page, channel), step);
}

function card(page, id) {
  return page.locator(`[data-testid="item-card"][data-item-id="${id}"]`);
}

/** Counts the page's requests: `count(method, path)`. */
function countRequests(page) {
  const seen = [];
  page.on('request', (req) => seen.push(`${req.method()} ${pathOf(req.url())}`));
  return (method, pathname) => seen.filter((r) => r === `${method} ${pathname}`).length;
}

/** A mark in the page's window: a reload or a page load loses it. */
async function markPage(page) {
  const mark = uniqueWord(8);
  await page.evaluate((m) => {
    window.__liveMark = m;
  }, mark);
  return async (step) =>
    assert.equal(await page.evaluate(() => window.__liveMark), mark, `${step}: the page was not reloaded`);
}

/** Signs a new user up through the page; ends on the board, logged in and live. */
async function signUp(page, prefix) {
  const username = `${prefix}_${Date.now().toString(36)}_${uniqueWord(6)}`;
  await page.goto(url('/signup'), { timeout: STEP_TIMEOUT_MS });
  await waitForAccount(page, 'logged-out', `${prefix}: sign-up page`);
  await page.getByTestId('auth-username').fill(username);
  await page.getByTestId('auth-password').fill(`pw ${uniqueWord(10)}`);
  await page.getByTestId('auth-submit').click();
  await waitForAccount(page, 'logged-in', `${prefix}: after sign-up`);
  await page.waitForURL(url('/board'));
  await waitForLive(page, 'board', `${prefix}: live board after sign-up`);
  await waitForBoard(page, `${prefix}: board after sign-up`);
  return username;
}

/** Posts an item from the board's form; returns it as the server stored it. */
async function postItem(page, title) {
  await page.getByTestId('create-title').fill(title);
  await page.getByTestId('create-body').fill(`Posted to be seen live: ${title}`);
  const created = page.waitForResponse(
    (res) => pathOf(res.url()) === ITEMS_PATH && res.request().method() === 'POST',
    { timeout: STEP_TIMEOUT_MS },
  );
  await page.getByTestId('create-submit').click();
  const res = await created;
  assert.equal(res.status(), 201, `POST ${ITEMS_PATH}: ${await res.text()}`);
  const { item } = await res.json();
  assert.equal(item.title, title);
  return item;
}

// The two users of the real-stack tests: signed up once, kept across both tests.
let pair = null;

async function openPair() {
  if (pair) return pair;
  const allow = [LOGGED_OUT_ME];
  const a = await openWatchedPage(getBrowser, allow);
  const b = await openWatchedPage(getBrowser, allow);
  pair = { a, b, allow, countB: countRequests(b.page) };
  await signUp(a.page, 'la');
  await signUp(b.page, 'lb');
  return pair;
}

after(async () => {
  await pair?.a.context.close();
  await pair?.b.context.close();
});

test(
  'what one user posts, attaches and deletes reaches another user live',
  { timeout: 2 * TEST_TIMEOUT_MS },
  async () => {
    const { a, b, countB } = await openPair();
    const pageA = a.page;
    const pageB = b.page;
    try {
      // --- a post reaches B's board at the top, without a reload or a list load ---
      const unreloaded = await markPage(pageB);
      const listLoads = countB('GET', ITEMS_PATH);
      const title = `Live ${uniqueWord()}`;
      const item = await postItem(pageA, title);
      await waitFor(pageB, card(pageB, item.id).and(pageB.locator('[data-live]')), 'the post on B’s board');
      assert.equal(
        await pageB.locator('[data-testid="item-card"]').first().getAttribute('data-item-id'),
        String(item.id),
        'inserted at the top',
      );
      assert.equal(await textOf(card(pageB, item.id).getByTestId('item-link')), title);
      assert.equal(countB('GET', ITEMS_PATH), listLoads, 'B did not load the list again');
      await unreloaded('board');
      await screenshot(pageB, 'live-board');

      // --- B opens the item; A's visit raises B's view count live ---
      await card(pageB, item.id).getByTestId('item-link').click();
      await waitFor(pageB, pageB.locator('main[data-testid="item-page"][data-state="ready"]'), 'B’s item page');
      await waitForLive(pageB, `item:${item.id}`, 'B subscribed to the item');
      await waitFor(pageB, pageB.locator('[data-testid="attachments-empty"]:not([data-stale])'), 'no attachments yet');
      const viewsB = Number(await pageB.getByTestId('item-views').getAttribute('data-views'));
      const unreloadedItem = await markPage(pageB);
      const attachmentLoads = countB('GET', `/api/items/${item.id}/attachments`);

      await pageA.getByTestId('posted').getByRole('link').click();
      await waitFor(pageA, pageA.locator('main[data-testid="item-page"][data-state="ready"]'), 'A’s item page');
      const viewsA = Number(await pageA.getByTestId('item-views').getAttribute('data-views'));
      assert.ok(viewsA > viewsB, `A's visit counted: B saw ${viewsB}, A sees ${viewsA}`);
      await waitUntil(
        pageB,
        'B’s view count follows',
        (min) => Number(document.querySelector('[data-testid="item-views"]')?.dataset.views) >= min,
        viewsA,
      );

      // --- A attaches a file; it appears on B's item page ---
      await waitFor(pageA, pageA.getByTestId('upload-form'), 'A’s upload form');
      const fileName = `live-${uniqueWord(6)}.txt`;
      await pageA.getByTestId('upload-input').setInputFiles({
        name: fileName,
        mimeType: 'text/plain',
        buffer: Buffer.from(`attached while B watches ${title}\n`),
      });
      await pageA.getByTestId('upload-submit').click();
      await waitFor(pageA, pageA.locator('[data-testid="upload-result"][data-outcome="attached"]'), 'A attached');
      const row = pageB.locator('[data-testid="attachment"]').filter({ hasText: fileName });
      await waitFor(pageB, row, 'the attachment on B’s item page');
      assert.equal(await textOf(row.getByTestId('attachment-name')), fileName);
      const attachmentsPath = `/api/items/${item.id}/attachments`;
      assert.equal(countB('GET', attachmentsPath), attachmentLoads, 'B did not load the list again');
      await unreloadedItem('item page');
      await screenshot(pageB, 'live-item');

      // --- B's own session counter, in a second tab, follows B's views ---
      const counter = await b.context.newPage();
      const counterProblems = watchForProblems(counter);
      try {
        await counter.goto(url('/'), { timeout: STEP_TIMEOUT_MS });
        await waitFor(counter, counter.locator('main[data-state="ready"]'), 'B’s counter page');
        await waitForLive(counter, 'me', 'B’s counter subscribed to its session');
        await waitForLive(counter, 'cluster', 'B’s cluster panel subscribed');
        const liveRow = counter.locator('[data-testid="cluster"][data-live] [data-testid="instance-row"]').first();
        await waitFor(counter, liveRow, 'live cluster panel');
        const before = Number(await textOf(counter.getByTestId('views')));
        const answer = await pageB.evaluate(async () => {
          const res = await fetch('/api/session', { cache: 'no-store', credentials: 'same-origin' });
          return { status: res.status, body: await res.json() };
        });
        assert.equal(answer.status, 200);
        assert.ok(answer.body.views > before, `another view counted: ${before} then ${answer.body.views}`);
        await waitUntil(
          counter,
          'the counter follows a view made in the other tab',
          (min) => Number(document.querySelector('[data-testid="views"]')?.textContent) >= min,
          answer.body.views,
        );
        assertNoProblems(counterProblems, 'on B’s counter page');
      } finally {
        await counter.close();
      }

      // --- A deletes the item; B's item page says so ---
      await pageA.getByTestId('item-delete').click();
      await pageA.getByTestId('delete-confirm').click();
      await pageA.waitForURL(url('/board'));
      await waitFor(pageB, pageB.getByTestId('item-deleted'), 'the deletion on B’s item page');
      await unreloadedItem('after the deletion');

      // ... and the board drops it without a reload.
      await pageB.getByTestId('back').click();
      await waitForBoard(pageB, 'B back on the board');
      await waitForLive(pageB, 'board', 'B’s board live again');
      const unreloadedBoard = await markPage(pageB);
      const second = await postItem(pageA, `Live again ${uniqueWord()}`);
      await waitFor(pageB, card(pageB, second.id), 'the second post on B’s board');
      await pageA.getByTestId('nav-board').click();
      await waitForBoard(pageA, 'A’s board');
      await card(pageA, second.id).getByTestId('item-delete').click();
      await card(pageA, second.id).getByTestId('delete-confirm').click();
      await waitFor(pageB, card(pageB, second.id), 'the deleted post leaves B’s board', { state: 'detached' });
      await unreloadedBoard('board after the deletion');

      assertNoProblems(a.problems, 'on A’s pages');
      assertNoProblems(b.problems, 'on B’s pages');
      assert.deepEqual(await a.cspViolations(), [], 'no CSP violations for A');
      assert.deepEqual(await b.cspViolations(), [], 'no CSP violations for B');
    } finally {
      await screenshot(pageB, 'live');
    }
  },
);

/** The pid an edge of the local stack runs as, checked to be that edge's process. */
async function edgePid(edge) {
  assert.match(edge, /^edge-\d+$/, `the indicator names an edge of the local stack: "${edge}"`);
  const pid = Number((await readFile(path.join(RUN_DIR, 'pids', `${edge}.pid`), 'utf8')).trim());
  assert.ok(Number.isSafeInteger(pid) && pid > 1, `pid of ${edge}: ${pid}`);
  const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  assert.ok(
    cmdline.some((arg) => path.basename(arg) === 'shoal-edge'),
    `pid ${pid} is a shoal-edge: ${cmdline.join(' ')}`,
  );
  return pid;
}

/**
 * Waits until the local stack's supervisor has started `edge` again (a pid other
 * than `killed`) and it answers /health/ready with 200, so that no request through
 * HAProxy meets it half-started. Returns the new pid.
 */
async function waitForRestart(edge, killed) {
  const dir = path.join(RUN_DIR, 'pids');
  let pid = killed;
  await until(async () => {
    pid = Number((await readFile(path.join(dir, `${edge}.pid`), 'utf8').catch(() => '')).trim());
    if (!pid || pid === killed) return false;
    const base = (await readFile(path.join(dir, `${edge}.addr`), 'utf8')).trim();
    const res = await fetch(`${base}/health/ready`, { signal: AbortSignal.timeout(1000) }).catch(() => null);
    await res?.arrayBuffer().catch(() => undefined);
    return res?.status === 200;
  }, `${edge} restarted by the supervisor and ready`);
  return pid;
}

/**
 * HAProxy (balance roundrobin, no prefer-last-server) alternates the two edges
 * request by request. Asks /health/live (which names the edge that answers) until
 * `edge` answered last, so that the next request goes to the other edge and the one
 * after it to `edge`.
 */
async function steerAfter(edge) {
  let last = '';
  await until(
    async () => {
      const res = await fetch(url('/health/live'), { signal: AbortSignal.timeout(1000) }).catch(() => null);
      last = res?.ok ? ((await res.json().catch(() => ({}))).instance ?? '') : '';
      return last === edge;
    },
    `a request answered by ${edge}`,
    async () => `(last: "${last}")`,
  );
}

test(
  'after its edge is killed, the board comes back live on the other edge and resumes from its last offset',
  { timeout: 2 * TEST_TIMEOUT_MS, skip: !RUN_DIR && 'SHOAL_RUN_DIR (the local stack’s run dir) not set' },
  async (t) => {
    const { a, b, allow, countB } = await openPair();
    const pageA = a.page;
    const pageB = b.page;
    // A page that asks /api/me of the edge while the supervisor restarts it gets a
    // 503 and tries again later: that is the page working as meant.
    allow.push({ method: 'GET', path: '/api/me', status: 503 });
    let release = () => undefined;
    try {
      await pageB.goto(url('/board'), { timeout: STEP_TIMEOUT_MS });
      await waitForLive(pageB, 'board', 'B live on the board');
      await waitForBoard(pageB, 'B’s board');
      await pageA.goto(url('/board'), { timeout: STEP_TIMEOUT_MS });
      await waitForLive(pageA, 'board', 'A live on the board');
      await waitForBoard(pageA, 'A’s board');
      const edge = await liveIndicator(pageB).getAttribute('data-edge');
      const pid = await edgePid(edge);
      const edges = (await readdir(path.join(RUN_DIR, 'pids')))
        .filter((f) => /^edge-\d+\.pid$/.test(f))
        .map((f) => f.slice(0, -'.pid'.length));
      assert.equal(edges.length, 2, `the local stack runs two edges: ${edges}`);
      const other = edges.find((e) => e !== edge);

      // B's next connection waits, at its /api/me, until A has posted: so the post
      // surely happens while B has no socket.
      const held = new Promise((resolve) => {
        release = resolve;
      });
      let meAsked = 0;
      const isMe = (u) => pathOf(u.href) === '/api/me';
      await pageB.route(isMe, async (route) => {
        meAsked++;
        await held;
        await route.continue();
      });
      const unreloaded = await markPage(pageB);
      const listLoads = countB('GET', ITEMS_PATH);

      process.kill(pid, 'SIGKILL');
      await waitFor(
        pageB,
        pageB.locator('[data-testid="live-indicator"][data-state="reconnecting"]'),
        `B notices that ${edge} (pid ${pid}) is gone`,
      );
      await until(
        () => meAsked > 0,
        'B tries to reconnect (asks /api/me first)',
        () => describePage(pageB),
      );
      const restarted = await waitForRestart(edge, pid);
      const title = `While away ${uniqueWord()}`;
      const item = await postItem(pageA, title);
      assert.equal(await card(pageB, item.id).count(), 0, 'B cannot have it yet');

      // The supervisor has started the killed edge again under its name. B's next
      // two requests are /api/me and the upgrade: steer them so that /api/me goes to
      // the restarted edge and the socket to the other one.
      await steerAfter(other);
      release();
      await waitForLive(pageB, 'board', 'B live again');
      const now = await liveIndicator(pageB).getAttribute('data-edge');
      t.diagnostic(`B moved from ${edge} (killed, pid ${pid}; restarted as pid ${restarted}) to ${now}`);
      assert.notEqual(now, edge, `B's socket is on the other edge, not on the restarted ${edge}`);
      await waitFor(pageB, card(pageB, item.id).and(pageB.locator('[data-live]')), 'the missed post on B’s board');
      assert.equal(
        await pageB.locator('[data-testid="item-card"]').first().getAttribute('data-item-id'),
        String(item.id),
        'at the top',
      );
      assert.equal(countB('GET', ITEMS_PATH), listLoads, 'B resumed from its offset: no list load');
      await unreloaded('after the reconnect');
      await screenshot(pageB, 'live-resume');
      await pageB.unroute(isMe);

      // The kill may cut a request of A's or B's in flight, and Chromium reports a
      // socket that could not be opened while the edge restarted: not faults of the page.
      for (const problems of [a.problems, b.problems]) {
        for (let i = problems.length - 1; i >= 0; i--) {
          if (/WebSocket connection to .*\/ws' failed/.test(problems[i])) problems.splice(i, 1);
        }
      }
      assertNoProblems(a.problems, 'on A’s page');
      assertNoProblems(b.problems, 'on B’s page');
    } finally {
      release();
    }
  },
);

/** The local stack's Redis pid, checked to be a redis-server. */
async function redisPid() {
  const pid = Number((await readFile(path.join(RUN_DIR, 'pids', 'redis.pid'), 'utf8')).trim());
  assert.ok(Number.isSafeInteger(pid) && pid > 1, `pid of redis: ${pid}`);
  const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  // Redis rewrites its title: "/usr/bin/redis-server 127.0.0.1:PORT"
  assert.equal(path.basename(cmdline[0].split(' ')[0]), 'redis-server', `pid ${pid} is Redis: ${cmdline[0]}`);
  return pid;
}

/** Every edge of the local stack answers /health/ready with `status`. */
async function edgesReady(status) {
  const dir = path.join(RUN_DIR, 'pids');
  const edges = (await readdir(dir)).filter((f) => /^edge-\d+\.addr$/.test(f));
  for (const f of edges) {
    const base = (await readFile(path.join(dir, f), 'utf8')).trim();
    const res = await fetch(`${base}/health/ready`, { signal: AbortSignal.timeout(1000) }).catch(() => null);
    await res?.arrayBuffer().catch(() => undefined);
    if (res?.status !== status) return false;
  }
  return edges.length > 0;
}

test(
  'through a Redis restart the board stays live and misses nothing, without a reload or refetch',
  { timeout: 2 * TEST_TIMEOUT_MS, skip: !RUN_DIR && 'SHOAL_RUN_DIR (the local stack’s run dir) not set' },
  async () => {
    const { a, b, allow, countB } = await openPair();
    const pageA = a.page;
    const pageB = b.page;
    // While Redis is away sessions cannot be checked: a page's call may get 503.
    allow.push({ method: 'GET', path: '/api/me', status: 503 });
    await navigate(pageB, url('/board'));
    await waitForLive(pageB, 'board', 'B live on the board');
    await waitForBoard(pageB, 'B’s board');
    await navigate(pageA, url('/board'));
    await waitForLive(pageA, 'board', 'A live on the board');
    await waitForBoard(pageA, 'A’s board');
    const before = await postItem(pageA, `Before Redis restarts ${uniqueWord()}`);
    await waitFor(pageB, card(pageB, before.id), 'B sees the post made before the restart');
    const unreloaded = await markPage(pageB);
    const listLoads = countB('GET', ITEMS_PATH);

    // A clean stop (as an operator's restart); the supervisor starts Redis again.
    const pid = await redisPid();
    process.kill(pid, 'SIGTERM');
    // (the supervisor restarts it within a fraction of a second, before readiness
    // would turn: the integration tests cover readiness during a longer outage)
    await until(async () => {
      const now = await redisPid().catch(() => pid);
      return now !== pid && (await edgesReady(200));
    }, 'Redis restarted by the supervisor and every edge ready again');
    // the session service reconnects to Redis by itself (with backoff): A's own
    // session answers again before A posts
    await until(
      async () => (await pageA.evaluate(() => fetch('/api/me').then((r) => r.status)).catch(() => 0)) === 200,
      'A’s session answers again',
    );

    const afterItem = await postItem(pageA, `After Redis restarted ${uniqueWord()}`);
    await waitFor(pageB, card(pageB, afterItem.id).and(pageB.locator('[data-live]')), 'B sees the new post live');
    assert.equal(await card(pageB, before.id).count(), 1, 'the earlier post is still there');
    assert.equal(countB('GET', ITEMS_PATH), listLoads, 'no list reload: nothing was lost');
    await unreloaded('after the Redis restart');
    await screenshot(pageB, 'live-redis-restart');
    assertNoProblems(a.problems, 'on A’s page');
    assertNoProblems(b.problems, 'on B’s page');
  },
);

// --- an edge played from inside the browser --------------------------------

function json(status, body) {
  return { status, contentType: 'application/json', body: JSON.stringify(body) };
}

const STUB_ME = { user: { id: 7, username: 'stub' }, csrf_token: 'c'.repeat(CSRF_TOKEN_LENGTH) };

function stubItem(id, title) {
  return { id, title, excerpt: `excerpt ${id}`, author: 'other', author_id: 99, created_at: Date.now() - id * 1000 };
}

test('the client resumes with since, drops what it saw and reloads after lost history', STUBBED_TEST, async () => {
  const { context, page, problems, cspViolations } = await openWatchedPage(getBrowser);
  let listLoads = 0;
  let listed = [stubItem(2, 'two'), stubItem(1, 'one')];
  await page.route(
    (u) => pathOf(u.href) === '/api/me',
    (route) => route.fulfill(json(200, STUB_ME)),
  );
  await page.route(
    (u) => pathOf(u.href) === ITEMS_PATH,
    (route) => {
      listLoads++;
      return route.fulfill(json(200, { items: listed, next_cursor: null }));
    },
  );
  // Each connection the page opens: what it sent, and the route to answer on.
  const conns = [];
  await page.routeWebSocket(
    (u) => pathOf(u.href) === LIVE_PATH,
    (ws) => {
      const conn = { ws, got: [], protocols: ws.protocols() };
      conns.push(conn);
      ws.onMessage((m) => conn.got.push(JSON.parse(String(m))));
      ws.send(JSON.stringify({ type: 'hello', edge: `fake-${conns.length}`, user: 'stub' }));
    },
  );
  const send = (conn, msg) => conn.ws.send(JSON.stringify(msg));
  const subscribeOf = (conn) => conn.got.find((m) => m.type === 'subscribe' && m.channel === 'board');
  const event = (offset, type, data, epoch = 'E1') => ({
    type: 'event',
    channel: 'board',
    event: type,
    data,
    epoch,
    offset,
    ts: 1,
  });
  const waitConn = async (n, step) => {
    await until(
      () => conns.length >= n && subscribeOf(conns[n - 1]),
      step,
      async () => JSON.stringify(conns.map((c) => c.got)),
    );
    return conns[n - 1];
  };
  const ids = () =>
    page.locator('[data-testid="item-card"]').evaluateAll((all) => all.map((c) => Number(c.dataset.itemId)));
  try {
    await page.goto(url('/board'), { timeout: STEP_TIMEOUT_MS });
    const first = await waitConn(1, 'first subscribe');
    assert.deepEqual(first.protocols, ['shoal.v1'], 'subprotocol');
    assert.equal(subscribeOf(first).since, undefined, 'a first subscription has no since');
    send(first, { type: 'subscribed', channel: 'board', epoch: 'E1', offset: 5 });
    await waitForLive(page, 'board', 'subscribed');
    await waitForBoard(page, 'list after subscribing');
    const loadsAfterFirst = listLoads;
    assert.ok(loadsAfterFirst >= 1 && loadsAfterFirst <= 2, `list loaded: ${loadsAfterFirst}`);
    assert.equal(await liveIndicator(page).getAttribute('data-edge'), 'fake-1');

    // An event, the same offset again (dropped) and a deletion.
    send(first, event(6, 'item_created', { item: stubItem(3, 'three') }));
    send(first, event(6, 'item_created', { item: stubItem(4, 'a duplicate offset') }));
    send(first, event(7, 'item_deleted', { id: 1 }));
    await waitFor(page, card(page, 1), 'item 1 removed', { state: 'detached' });
    assert.deepEqual(await ids(), [3, 2], 'new item on top, duplicate dropped, deleted one gone');

    // The edge goes away: the page reconnects and asks for what came after offset 7.
    await first.ws.close({ code: 1001, reason: 'draining' });
    const second = await waitConn(2, 'resubscribe after 1001');
    assert.deepEqual(subscribeOf(second).since, { epoch: 'E1', offset: 7 }, 'since = the last offset seen');
    send(second, event(7, 'item_created', { item: stubItem(5, 'replayed twice') }));
    send(second, event(8, 'item_created', { item: stubItem(6, 'missed') }));
    send(second, { type: 'subscribed', channel: 'board', epoch: 'E1', offset: 8, recovered: true });
    await waitFor(page, card(page, 6), 'the missed item, replayed');
    await waitForLive(page, 'board', 'live on the second connection');
    assert.equal(await liveIndicator(page).getAttribute('data-edge'), 'fake-2');
    assert.deepEqual(await ids(), [6, 3, 2], 'offset 7 again was dropped');
    assert.equal(listLoads, loadsAfterFirst, 'recovered: no list load');

    // A slow consumer is cut (4001); this time the history does not cover the gap.
    await second.ws.close({ code: 4001, reason: 'slow consumer' });
    // What the server holds by then: one item nobody was told about (posted in the gap).
    listed = [stubItem(8, 'posted in the gap'), stubItem(2, 'two')];
    const third = await waitConn(3, 'resubscribe after 4001');
    assert.deepEqual(subscribeOf(third).since, { epoch: 'E1', offset: 8 });
    send(third, { type: 'subscribed', channel: 'board', epoch: 'E2', offset: 1, recovered: false });
    await until(() => listLoads === loadsAfterFirst + 1, 'the list is loaded again after lost history');
    await waitForBoard(page, 'list after the reload');
    assert.deepEqual(await ids(), [8, 2], 'the list as the server has it now');
    send(third, event(1, 'item_created', { item: stubItem(10, 'at the position: seen') }, 'E2'));
    send(third, event(2, 'item_created', { item: stubItem(9, 'new epoch') }, 'E2'));
    await waitFor(page, card(page, 9), 'an event of the new epoch');
    assert.deepEqual(await ids(), [9, 8, 2], 'offset 1 of the new epoch was already covered');

    // The session ends under the socket: logged out, offline, no reconnect.
    await third.ws.close({ code: 4401, reason: 'session ended' });
    await waitFor(page, page.locator('[data-testid="live-indicator"][data-state="offline"]'), 'offline after 4401');
    await waitForAccount(page, 'logged-out', 'logged out after 4401');
    assert.equal(conns.length, 3, 'no new connection after 4401');

    assertNoProblems(problems, 'with a played edge');
    assert.deepEqual(await cspViolations(), [], 'no CSP violations');
  } finally {
    await screenshot(page, 'live-stubbed');
    await context.close();
  }
});

test('the cluster panel applies member events from the live channel', STUBBED_TEST, async () => {
  const { context, page, problems, cspViolations } = await openWatchedPage(getBrowser);
  let clusterLoads = 0;
  const row = (service, instance, state) => ({ service, instance, state, address: `tcp://${instance}`, uptime_s: 5 });
  await page.route(
    (u) => pathOf(u.href) === '/api/me',
    (route) => route.fulfill(json(200, STUB_ME)),
  );
  await page.route(
    (u) => pathOf(u.href) === '/api/cluster',
    (route) => {
      clusterLoads++;
      return route.fulfill(json(200, { instances: [row('session', 'session-1', 'up'), row('edge', 'edge-1', 'up')] }));
    },
  );
  let conn = null;
  await page.routeWebSocket(
    (u) => pathOf(u.href) === LIVE_PATH,
    (ws) => {
      conn = ws;
      ws.onMessage((m) => {
        const msg = JSON.parse(String(m));
        if (msg.type === 'subscribe') ws.send(JSON.stringify({ type: 'subscribed', channel: msg.channel }));
      });
      ws.send(JSON.stringify({ type: 'hello', edge: 'fake-1', user: 'stub' }));
    },
  );
  const member = (data) =>
    conn.send(JSON.stringify({ type: 'event', channel: 'cluster', event: 'member', data, ts: 1 }));
  const rowState = (instance, state) =>
    page.locator(`[data-testid="instance-row"][data-instance="${instance}"][data-state="${state}"]`);
  try {
    // Logged in on this browser before: the counter page goes live by itself.
    await page.addInitScript(() => window.localStorage.setItem('shoal.logged-in', '1'));
    await page.goto(url('/'), { timeout: STEP_TIMEOUT_MS });
    await waitForLive(page, 'cluster', 'cluster subscribed');
    await waitFor(page, page.locator('[data-testid="cluster"][data-live]'), 'the panel in live mode');
    await waitFor(page, rowState('session-1', 'up'), 'the table');
    const loads = clusterLoads;
    member({ service: 'session', instance: 'session-1', state: 'dead', endpoint: 'tcp://s1', change: 'changed' });
    await waitFor(page, rowState('session-1', 'dead'), 'a member turns dead at once');
    member({ service: 'session', instance: 'session-2', state: 'up', endpoint: 'tcp://s2', change: 'joined' });
    await waitFor(page, rowState('session-2', 'up'), 'a new member is listed');
    member({ service: 'session', instance: 'session-1', state: 'dead', endpoint: 'tcp://s1', change: 'left' });
    await waitFor(page, page.locator('[data-testid="instance-row"][data-instance="session-1"]'), 'a member leaves', {
      state: 'detached',
    });
    assert.ok(clusterLoads <= loads + 1, `events, not polls, changed the table: ${loads} then ${clusterLoads} reads`);
    assertNoProblems(problems, 'with a played edge');
    assert.deepEqual(await cspViolations(), [], 'no CSP violations');
  } finally {
    await context.close();
  }
});
