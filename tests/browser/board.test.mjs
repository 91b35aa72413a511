// End-to-end test of the board through a real browser: Debian's Chromium driven by
// playwright-core, against a running Shoal stack at SHOAL_URL (edge, session and
// query services, Postgres). A fresh user signs up, posts an item, finds it in the
// list and by search, opens it (the view count rises), deletes it and logs out; the
// page must never log an error or break its Content-Security-Policy. Two more tests
// answer some calls from inside the browser (page.route) to check what the real
// stack rarely does: a 503 while listing, paging, an empty search, user text that
// looks like HTML, and the forms' pending state, limits and server messages; with
// SHOAL_BROWSER_SKIP_STUBBED=1 only the first test runs (the containers tier runs it
// over HTTPS through the compose stack's HAProxy).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertNoProblems,
  BASE_URL,
  CSRF_TOKEN_LENGTH,
  liveIndicator,
  LOGGED_OUT_ME,
  navigate,
  openWatchedPage,
  pathOf,
  readPage,
  screenshot,
  STEP_TIMEOUT_MS,
  stepWaits,
  stubLiveSocket,
  STUBBED_TEST,
  TEST_TIMEOUT_MS,
  textOf,
  uniqueWord,
  url,
  useBrowser,
} from './browser.mjs';

const getBrowser = useBrowser();


function openPage(allow = []) {
  return openWatchedPage(getBrowser, allow);
}



/** What the board shows now, for failure messages. */
function describeBoard(page) {
  return readPage(page, () => {
    const main = document.querySelector('main');
    const cards = [...document.querySelectorAll('[data-testid="item-card"]')].map((c) => c.dataset.itemId);
    const status = document.querySelector('[data-testid="board-status"]')?.textContent ?? '';
    const account = document.querySelector('[data-testid="account"]')?.dataset.state;
    return `${location.pathname}${location.search} main=${main?.dataset.testid}/${main?.dataset.state} account=${account} cards=[${cards}] status="${status}"`;
  });
}

const { waitFor, waitForAccount } = stepWaits(describeBoard);

/**
 * Waits until the board shows a fresh answer (list or empty state) for search `q`,
 * or fails early when the board reached its error state.
 */
async function waitForList(page, q, step) {
  const fresh = `[data-q=${JSON.stringify(q)}]:not([data-stale])`;
  const shown = page.locator(
    `main[data-testid="board"][data-state="ready"] :is([data-testid="item-list"], [data-testid="empty"])${fresh}`,
  );
  const failed = page.locator('main[data-testid="board"][data-state="error"]');
  await waitFor(page, shown.or(failed), step);
  if (await failed.count()) assert.fail(`${step}: board error: ${await textOf(page.getByTestId('board-status'))}`);
}

function card(page, id) {
  return page.locator(`[data-testid="item-card"][data-item-id="${id}"]`);
}

async function apiStatus(context, pathname) {
  const res = await context.request.get(url(pathname), { failOnStatusCode: false });
  await res.dispose();
  return res.status();
}

test(
  'a new user posts an item, finds it, opens it, deletes it and logs out',
  { timeout: 2 * TEST_TIMEOUT_MS },
  async () => {
    const allow = [LOGGED_OUT_ME];
    const { context, page, problems, cspViolations } = await openPage(allow);
    const word = uniqueWord();
    const username = `bt_${Date.now().toString(36)}_${uniqueWord(6)}`;
    const password = `pw ${uniqueWord(10)}`;
    const title = `Board check ${word}`;
    // Looks like HTML on purpose: the page must show it as text.
    const body = `First line <b>not bold</b> & "quoted"\nsecond line, the word ${word}`;
    const requests = [];
    page.on('request', (req) => {
      if (pathOf(req.url()).startsWith('/api/')) {
        requests.push({ method: req.method(), url: req.url(), csrf: req.headers()['x-csrf-token'] });
      }
    });
    try {
      // --- logged out ---
      await navigate(page, url('/board'));
      await waitForAccount(page, 'logged-out', 'first load');
      await waitForList(page, '', 'first load');
      assert.equal(await page.title(), 'Shoal — board');
      assert.equal(await page.getByTestId('create-form').count(), 0, 'no create form while logged out');
      await waitFor(page, page.getByTestId('logged-out-note'), 'logged-out note');
      assertNoProblems(problems, 'on first load');

      // --- sign up ---
      await page.getByTestId('signup-link').click();
      await page.waitForURL(url('/signup'));
      await page.getByTestId('auth-username').fill(username);
      await page.getByTestId('auth-password').fill(password);
      await page.getByTestId('auth-submit').click();
      await waitForAccount(page, 'logged-in', 'after sign-up');
      await page.waitForURL(url('/board'));
      assert.equal(await textOf(page.getByTestId('account-name')), username);
      const userId = Number(await page.getByTestId('account-name').getAttribute('data-user-id'));
      // Logged in, the page opens its live connection and reloads the list once
      // subscribed: let that settle before counting the post's requests.
      await waitFor(page, liveIndicator(page, 'board'), 'live board after sign-up');
      await waitForList(page, '', 'after sign-up');
      assertNoProblems(problems, 'after sign-up');

      // --- post, with a stale CSRF token on the first try ---
      // The browser answers the first POST as the edge does for a wrong token; the page
      // must fetch /api/me once and send the post again with the session's token.
      allow.push({ method: 'POST', path: '/api/items', status: 403 });
      let stubbed = 0;
      const isItems = (u) => pathOf(u.href) === '/api/items';
      await page.route(isItems, async (route) => {
        if (route.request().method() !== 'POST' || stubbed > 0) return route.fallback();
        stubbed++;
        return route.fulfill({
          status: 403,
          contentType: 'application/json',
          body: JSON.stringify({ error: { code: 'csrf', message: 'missing or wrong CSRF token' } }),
        });
      });
      await waitFor(page, page.getByTestId('create-form'), 'create form');
      await page.getByTestId('create-title').fill(title);
      await page.getByTestId('create-body').fill(body);
      assert.equal(await textOf(page.getByTestId('title-count')), `${[...title].length} / 200`);
      assert.equal(await textOf(page.getByTestId('body-count')), `${[...body].length} / 10,000`);
      const created = page.waitForResponse(
        (res) => pathOf(res.url()) === '/api/items' && res.request().method() === 'POST' && res.status() === 201,
      );
      requests.length = 0;
      await page.getByTestId('create-submit').click();
      const item = (await (await created).json()).item;
      assert.equal(item.title, title);
      assert.equal(item.body, body);
      assert.equal(item.author_id, userId);
      const writes = requests.map((r) => `${r.method} ${pathOf(r.url)}`);
      const posts = requests.filter((r) => r.method === 'POST');
      assert.deepEqual(writes.slice(0, 3), ['POST /api/items', 'GET /api/me', 'POST /api/items'], 'retry after csrf');
      assert.equal(posts.length, 2, 'exactly one retry');
      assert.equal(posts[1].csrf?.length, CSRF_TOKEN_LENGTH, 'the retry carries the session token');
      await page.unroute(isItems);
      allow.pop();

      // --- the new item is first in the list (read-your-writes) ---
      await waitForList(page, '', 'after posting');
      await waitFor(page, card(page, item.id), 'new item in the list');
      assert.equal(
        await page.locator('[data-testid="item-card"]').first().getAttribute('data-item-id'),
        String(item.id),
        'newest first',
      );
      assert.equal(await textOf(card(page, item.id).getByTestId('item-link')), title);
      assert.equal(await textOf(card(page, item.id).getByTestId('item-author')), username);
      assert.equal(await card(page, item.id).getByTestId('item-delete').count(), 1, 'own item has Delete');
      assert.equal(await page.getByTestId('create-title').inputValue(), '', 'form cleared');
      if (new URL(BASE_URL).protocol === 'https:') {
        // Behind TLS the edge marks its cookies Secure; the flow above relied on them.
        const cookies = (await context.cookies()).map((c) => `${c.name}${c.secure ? ' Secure' : ''}`).sort();
        assert.deepEqual(cookies, ['shoal_lsn Secure', 'shoal_sid Secure', 'shoal_ws Secure'],
          'cookies over https');
      }
      await screenshot(page, 'board-list');
      assertNoProblems(problems, 'after posting');

      // --- search for the unique word (typed, so the search waits for a pause) ---
      requests.length = 0;
      await page.getByTestId('search').pressSequentially(word, { delay: 15 });
      await waitForList(page, word, 'search');
      const cards = await page
        .locator('[data-testid="item-card"]')
        .evaluateAll((all) => all.map((c) => c.dataset.itemId));
      assert.deepEqual(cards, [String(item.id)], `only the new item matches "${word}"`);
      const searches = requests.filter((r) => r.method === 'GET' && new URL(r.url).searchParams.has('q'));
      assert.ok(searches.length >= 1 && searches.length < word.length, `search debounced: ${searches.length} requests`);
      assert.equal(new URL(searches.at(-1).url).searchParams.get('q'), word);
      assert.equal(new URL(page.url()).searchParams.get('q'), word, 'the search is in the URL');

      // --- the item page counts views and shows the text as text ---
      await card(page, item.id).getByTestId('item-link').click();
      await page.waitForURL(url(`/items/${item.id}`));
      const itemPage = page.locator('main[data-testid="item-page"][data-state="ready"]');
      await waitFor(page, itemPage, 'item page');
      assert.equal(await textOf(page.getByTestId('item-title')), title);
      assert.equal(await textOf(page.getByTestId('item-author')), username);
      assert.equal(await page.getByTestId('item-body').textContent(), body, 'body shown as sent');
      assert.equal(await page.getByTestId('item-body').locator('b').count(), 0, 'no markup from user text');
      const stamp = await page.getByTestId('item-created').getAttribute('datetime');
      assert.ok(stamp && Math.abs(Date.parse(stamp) - Date.now()) < 10 * 60_000, `created just now: ${stamp}`);
      const views = Number(await page.getByTestId('item-views').getAttribute('data-views'));
      assert.ok(views >= 1, `views shown: ${views}`);
      assert.match(await textOf(page.getByTestId('item-views')), /^\d[\d,]* views?$/);
      assert.equal(await page.title(), `${title} — Shoal`);
      await screenshot(page, 'board-item');

      await page.reload({ timeout: STEP_TIMEOUT_MS });
      await waitFor(page, itemPage, 'item page after reload');
      await waitForAccount(page, 'logged-in', 'item page after reload');
      const viewsAgain = Number(await page.getByTestId('item-views').getAttribute('data-views'));
      assert.ok(viewsAgain > views, `a reload counts a view: ${views} then ${viewsAgain}`);
      assertNoProblems(problems, 'on the item page');

      // --- Back returns to the same search ---
      await page.goBack();
      await waitForList(page, word, 'back to the search');
      assert.equal(await page.getByTestId('search').inputValue(), word);

      // --- delete it from its page (after a confirmation) ---
      await card(page, item.id).getByTestId('item-link').click();
      await waitFor(page, itemPage, 'item page again');
      await page.getByTestId('item-delete').click();
      await page.getByTestId('delete-cancel').click();
      assert.equal(await page.getByTestId('item-delete').count(), 1, 'Cancel keeps the item');
      await page.getByTestId('item-delete').click();
      await page.getByTestId('delete-confirm').click();
      await page.waitForURL(url('/board'));
      await waitForList(page, '', 'after delete');
      assert.equal(await card(page, item.id).count(), 0, 'the deleted item is not listed');
      assert.equal(await apiStatus(context, `/api/items/${item.id}`), 404, 'the deleted item is gone');
      assertNoProblems(problems, 'after delete');

      // --- log out ---
      await page.getByTestId('logout').click();
      await waitForAccount(page, 'logged-out', 'after log-out');
      assert.equal(await page.getByTestId('create-form').count(), 0, 'no create form after log-out');
      await waitFor(page, page.getByTestId('logged-out-note'), 'logged-out note after log-out');
      assert.equal(await apiStatus(context, '/api/me'), 401, '/api/me after log-out');

      // --- a wrong password gets the server's message; the right one logs in ---
      allow.push({ method: 'POST', path: '/api/auth/login', status: 401 });
      await page.getByTestId('login-link').click();
      await page.waitForURL(url('/login'));
      await page.getByTestId('auth-username').fill(username);
      await page.getByTestId('auth-password').fill(`${password}-wrong`);
      await page.getByTestId('auth-submit').click();
      await waitFor(page, page.getByTestId('auth-error').filter({ hasText: /\S/ }), 'wrong password');
      assert.equal(await textOf(page.getByTestId('auth-error')), 'wrong username or password');
      assert.equal(await page.getByTestId('auth-submit').isEnabled(), true, 'the button is back');
      await page.getByTestId('auth-password').fill(password);
      await page.getByTestId('auth-submit').click();
      await waitForAccount(page, 'logged-in', 'after log-in');
      await page.waitForURL(url('/board'));
      assert.equal(await textOf(page.getByTestId('account-name')), username);

      await page.getByTestId('logout').click();
      await waitForAccount(page, 'logged-out', 'after the second log-out');
      assert.equal(await apiStatus(context, '/api/me'), 401, '/api/me after the second log-out');
      await page.reload({ timeout: STEP_TIMEOUT_MS });
      await waitForAccount(page, 'logged-out', 'reload after log-out');
      await waitForList(page, '', 'reload after log-out');

      assertNoProblems(problems, 'at the end');
      assert.deepEqual(await cspViolations(), [], 'no CSP violations');
    } finally {
      await screenshot(page, 'board');
      await context.close();
    }
  },
);

// --- stubbed answers ------------------------------------------------------

function json(status, body, headers = {}) {
  return { status, contentType: 'application/json', headers, body: JSON.stringify(body) };
}

function stubItem(id, title, author = 'someone') {
  return {
    id,
    title,
    excerpt: `excerpt of ${id}`,
    author,
    author_id: 9_000 + id,
    created_at: Date.now() - id * 60_000,
  };
}

test(
  'the board retries a 503, pages with Load more and shows user text as text',
  STUBBED_TEST,
  async () => {
    const allow = [LOGGED_OUT_ME, { method: 'GET', path: '/api/items', status: 503 }];
    const { context, page, problems, cspViolations } = await openPage(allow);
    const hostile = '<img src=x onerror="window.__shoalXss=1"> & <script>window.__shoalXss=2</script>';
    const calls = [];
    await page.route(
      (u) => pathOf(u.href) === '/api/items',
      (route) => {
        const params = new URL(route.request().url()).searchParams;
        calls.push(params.toString());
        if (calls.length === 1) {
          return route.fulfill(
            json(
              503,
              { error: { code: 'unavailable', message: 'no query instance answered' } },
              { 'Retry-After': '1' },
            ),
          );
        }
        if (params.get('q')) return route.fulfill(json(200, { items: [], next_cursor: null }));
        if (params.get('cursor') === '2')
          return route.fulfill(json(200, { items: [stubItem(1, 'oldest')], next_cursor: null }));
        return route.fulfill(json(200, { items: [stubItem(3, hostile), stubItem(2, 'middle')], next_cursor: '2' }));
      },
    );
    try {
      await navigate(page, url('/board'));
      await waitFor(page, page.locator('main[data-testid="board"][data-state="retrying"]'), 'retrying after 503');
      assert.equal(await textOf(page.getByTestId('board-status')), 'Service unavailable, retrying…');
      await waitForList(page, '', 'after the retry');
      assert.equal(await textOf(page.getByTestId('board-status')), '', 'status line cleared');
      assert.equal(calls.length, 2, 'one retry');

      assert.equal(await textOf(card(page, 3).getByTestId('item-link')), hostile, 'title shown as text');
      assert.equal(await page.locator('[data-testid="item-list"] img, [data-testid="item-list"] script').count(), 0);
      assert.equal(await page.evaluate(() => window.__shoalXss), undefined, 'no script ran');
      assert.equal(await card(page, 3).getByTestId('item-delete').count(), 0, 'no Delete on others’ items');

      await page.getByTestId('load-more').click();
      await waitFor(page, card(page, 1), 'second page');
      const ids = await page
        .locator('[data-testid="item-card"]')
        .evaluateAll((all) => all.map((c) => c.dataset.itemId));
      assert.deepEqual(ids, ['3', '2', '1'], 'pages appended, newest first');
      assert.equal(await page.getByTestId('load-more').count(), 0, 'no Load more on the last page');
      assert.equal(calls.at(-1), 'cursor=2');

      await page.getByTestId('search').fill('nothingmatches');
      await waitForList(page, 'nothingmatches', 'empty search');
      assert.equal(await textOf(page.getByTestId('empty')), 'No items match “nothingmatches”.');

      assertNoProblems(problems, 'with stubbed items');
      assert.deepEqual(await cspViolations(), [], 'no CSP violations');
    } finally {
      await context.close();
    }
  },
);

test('the forms show limits, their pending state and the server’s messages', STUBBED_TEST, async () => {
  const allow = [
    LOGGED_OUT_ME,
    { method: 'POST', path: '/api/auth/login', status: 401 },
    { method: 'POST', path: '/api/auth/signup', status: 409 },
    { method: 'POST', path: '/api/auth/signup', status: 429 },
    { method: 'POST', path: '/api/items', status: 400 },
  ];
  const { context, page, problems, cspViolations } = await openPage(allow);
  // Once the stubbed /api/me says "logged in", the page opens its live connection.
  await stubLiveSocket(page);
  try {
    // Log in: the button is disabled while the request is pending, then shows the message.
    let release;
    const held = new Promise((resolve) => (release = resolve));
    await page.route(
      (u) => pathOf(u.href) === '/api/auth/login',
      async (route) => {
        await held;
        await route.fulfill(json(401, { error: { code: 'unauthorized', message: 'wrong username or password' } }));
      },
    );
    await navigate(page, url('/login'));
    await waitForAccount(page, 'logged-out', 'login page');
    await page.getByTestId('auth-username').fill('somebody');
    await page.getByTestId('auth-password').fill('not the password');
    await page.getByTestId('auth-submit').click();
    await waitFor(page, page.locator('[data-testid="auth-submit"]:disabled'), 'button disabled while pending');
    release();
    await waitFor(page, page.locator('[data-testid="auth-submit"]:enabled'), 'button enabled again');
    assert.equal(await textOf(page.getByTestId('auth-error')), 'wrong username or password');

    // Sign up: a taken name and a rate limit, each with the server's message.
    const signups = [
      json(409, { error: { code: 'conflict', message: 'username is taken' } }),
      json(429, { error: { code: 'rate_limited', message: 'too many sign-ups' } }, { 'Retry-After': '120' }),
    ];
    await page.route(
      (u) => pathOf(u.href) === '/api/auth/signup',
      (route) => route.fulfill(signups.shift()),
    );
    await page.getByRole('link', { name: 'No account yet? Sign up' }).click();
    await page.waitForURL(url('/signup'));
    await page.getByTestId('auth-username').fill('alice');
    await page.getByTestId('auth-password').fill('correct horse');
    await page.getByTestId('auth-submit').click();
    await waitFor(page, page.getByTestId('auth-error').filter({ hasText: 'username is taken' }), 'taken name');
    await page.getByTestId('auth-submit').click();
    await waitFor(page, page.getByTestId('auth-error').filter({ hasText: 'too many' }), 'rate limited');
    assert.equal(await textOf(page.getByTestId('auth-error')), 'too many sign-ups Try again in 120 seconds.');

    // Create form of a (stubbed) logged-in user: counters, limits, the server's refusal.
    await page.route(
      (u) => pathOf(u.href) === '/api/me',
      (route) =>
        route.fulfill(json(200, { user: { id: 5, username: 'stub' }, csrf_token: 'x'.repeat(CSRF_TOKEN_LENGTH) })),
    );
    await page.route(
      (u) => pathOf(u.href) === '/api/items',
      (route) =>
        route.request().method() === 'POST'
          ? route.fulfill(
              json(400, { error: { code: 'invalid', message: 'title must not contain control characters' } }),
            )
          : route.fulfill(json(200, { items: [], next_cursor: null })),
    );
    await page.reload({ timeout: STEP_TIMEOUT_MS });
    await page.getByTestId('nav-board').click();
    await waitForAccount(page, 'logged-in', 'stubbed user');
    await waitForList(page, '', 'empty board');
    assert.equal(await textOf(page.getByTestId('empty')), 'No items yet. Be the first to post one.');
    const submit = page.getByTestId('create-submit');
    assert.equal(await submit.isDisabled(), true, 'no post without a title');
    await page.getByTestId('create-title').fill('   ');
    assert.equal(await submit.isDisabled(), true, 'no post with a blank title');
    // 201 characters, one of them outside the BMP: counted as the server counts.
    await page.getByTestId('create-title').fill(`🐟${'a'.repeat(200)}`);
    assert.equal(await textOf(page.getByTestId('title-count')), '201 / 200 — 1 too many');
    assert.equal(await submit.isDisabled(), true, 'no post over the title limit');
    await page.getByTestId('create-title').fill(`🐟${'a'.repeat(199)}`);
    assert.equal(await textOf(page.getByTestId('title-count')), '200 / 200');
    await page.getByTestId('create-body').fill('b'.repeat(10_001));
    assert.equal(await submit.isDisabled(), true, 'no post over the body limit');
    await page.getByTestId('create-body').fill('fine');
    await submit.click();
    await waitFor(page, page.getByTestId('create-error').filter({ hasText: /\S/ }), 'server refusal shown');
    assert.equal(await textOf(page.getByTestId('create-error')), 'title must not contain control characters');
    assert.equal(await page.getByTestId('create-title').inputValue(), `🐟${'a'.repeat(199)}`, 'the text is kept');

    assertNoProblems(problems, 'with stubbed forms');
    assert.deepEqual(await cspViolations(), [], 'no CSP violations');
  } finally {
    await context.close();
  }
});
