// End-to-end test of file attachments through a real browser: Debian's Chromium
// driven by playwright-core, against a running Shoal stack at SHOAL_URL (edge,
// session, query and upload services, Postgres, S3). A fresh user signs up, posts an
// item and attaches a 6 MiB file of random bytes to it while the upload bandwidth is
// throttled (so the progress bar must be seen between empty and full), finds it in
// the list with its size, downloads it back and compares the bytes; a cancelled
// upload leaves nothing behind; a text file named and typed as PNG is refused (415)
// while the next file of the same batch is attached. A second test answers the
// uploads from inside the browser (page.route) to check what the real stack rarely
// does: 413 (too large, over quota), 503, 504, a broken connection, a stale CSRF
// token, and a hostile name and link in the list; it is skipped with
// SHOAL_BROWSER_SKIP_STUBBED=1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  assertNoProblems,
  CSRF_TOKEN_LENGTH,
  LOGGED_OUT_ME,
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

const MIB = 1024 * 1024;
const BIG_SIZE = 6 * MIB;
/** Upload bandwidth while the big file is sent: about 3 s for 6 MiB, so the
 *  progress bar passes through many values even on loopback. */
const PROGRESS_BYTES_PER_S = 2 * MIB;
/** Upload bandwidth while a file is cancelled: slow enough to be surely mid-way. */
const CANCEL_BYTES_PER_S = 128 * 1024;
/** Time for the big upload: its throttled duration plus the usual step limit. */
const UPLOAD_TIMEOUT_MS = Math.ceil((BIG_SIZE / PROGRESS_BYTES_PER_S) * 1000) + 2 * STEP_TIMEOUT_MS;
const UPLOADS_PATH = '/api/uploads';


function sha256(bytes) {
  return createHash('sha256').update(bytes).digest('hex');
}

function openPage(allow = []) {
  return openWatchedPage(getBrowser, allow);
}



/** What the item page shows now, for failure messages. */
function describePage(page) {
  return readPage(page, () => {
    const main = document.querySelector('main');
    const body = document.querySelector('[data-testid="attachments-body"]');
    const rows = [...document.querySelectorAll('[data-testid="attachment"]')].map((r) => r.dataset.attachmentId);
    const results = [...document.querySelectorAll('[data-testid="upload-result"]')].map(
      (r) => `${r.dataset.outcome}: ${r.textContent}`,
    );
    const status = document.querySelector('[data-testid="attachments-status"]')?.textContent ?? '';
    const progress = document.querySelector('[data-testid="upload-progress-text"]')?.textContent ?? '';
    return `${location.pathname} main=${main?.dataset.testid}/${main?.dataset.state} attachments=${body?.dataset.state} rows=[${rows}] results=${JSON.stringify(results)} progress="${progress}" status="${status}"`;
  });
}

const { waitFor, waitForAccount } = stepWaits(describePage);

/** Waits until the attachment list shows a fresh answer with exactly `count` rows. */
async function waitForAttachments(page, count, step) {
  const fresh = page.locator('[data-testid="attachments-body"][data-state="ready"]');
  const shown =
    count === 0
      ? fresh.locator('[data-testid="attachments-empty"]:not([data-stale])')
      : fresh.locator(
          `[data-testid="attachment-list"]:not([data-stale]):has([data-testid="attachment"]:nth-child(${count})):not(:has([data-testid="attachment"]:nth-child(${count + 1})))`,
        );
  await waitFor(page, shown, step);
}

/** The rows of the attachment list as the page shows them. */
function listedAttachments(page) {
  return page.locator('[data-testid="attachment"]').evaluateAll((rows) =>
    rows.map((r) => ({
      id: Number(r.dataset.attachmentId),
      size: Number(r.dataset.size),
      name: r.querySelector('[data-testid="attachment-name"]')?.textContent ?? '',
      sizeText: r.querySelector('[data-testid="attachment-size"]')?.textContent ?? '',
      type: r.querySelector('[data-testid="attachment-type"]')?.textContent ?? '',
      href: r.querySelector('[data-testid="attachment-download"]')?.getAttribute('href') ?? '',
      download: r.querySelector('[data-testid="attachment-download"]')?.getAttribute('download'),
    })),
  );
}

/** The item's attachments as the server lists them (with the page's cookies). */
async function apiAttachments(context, itemId) {
  const res = await context.request.get(url(`/api/items/${itemId}/attachments`), { failOnStatusCode: false });
  const status = res.status();
  const body = status === 200 ? await res.json() : await res.text();
  await res.dispose();
  assert.equal(status, 200, `GET /api/items/${itemId}/attachments: ${JSON.stringify(body)}`);
  return body.attachments;
}

/**
 * Records, inside the page, every value the upload progress bar takes: a
 * MutationObserver sees each change React makes, so a value shown for one frame is
 * not missed. Returns a function that reads the samples `{ value, max }`.
 */
async function recordProgress(page) {
  await page.evaluate(() => {
    window.__uploadProgress = [];
    const sample = () => {
      const bar = document.querySelector('[data-testid="upload-progress"]');
      if (!bar) return;
      const last = window.__uploadProgress.at(-1);
      if (!last || last.value !== bar.value || last.max !== bar.max) {
        window.__uploadProgress.push({ value: bar.value, max: bar.max, text: bar.getAttribute('aria-valuetext') });
      }
    };
    new MutationObserver(sample).observe(document.body, { subtree: true, childList: true, attributes: true });
  });
  return () => page.evaluate(() => window.__uploadProgress.splice(0));
}

/** Limits the page's upload bandwidth (bytes per second; -1 lifts the limit). */
async function throttleUploads(cdp, bytesPerSecond) {
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
}

/**
 * Removes from `problems` the entries a test caused on purpose (matched by `pattern`)
 * and returns how many there were.
 */
function forgive(problems, pattern) {
  let count = 0;
  for (let i = problems.length - 1; i >= 0; i--) {
    if (pattern.test(problems[i])) {
      problems.splice(i, 1);
      count++;
    }
  }
  return count;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Signs a new user up through the page and posts an item; returns it on its page. */
async function signUpAndPost(page, word) {
  const username = `ut_${Date.now().toString(36)}_${uniqueWord(6)}`;
  const password = `pw ${uniqueWord(10)}`;
  await page.goto(url('/signup'), { timeout: STEP_TIMEOUT_MS });
  await waitForAccount(page, 'logged-out', 'sign-up page');
  await page.getByTestId('auth-username').fill(username);
  await page.getByTestId('auth-password').fill(password);
  await page.getByTestId('auth-submit').click();
  await waitForAccount(page, 'logged-in', 'after sign-up');
  await page.waitForURL(url('/board'));

  const title = `Attachments ${word}`;
  await waitFor(page, page.getByTestId('create-form'), 'create form');
  await page.getByTestId('create-title').fill(title);
  await page.getByTestId('create-body').fill(`Files for ${word}`);
  await page.getByTestId('create-submit').click();
  const posted = page.getByTestId('posted').getByRole('link');
  await waitFor(page, posted, 'posted');
  await posted.click();
  await waitFor(page, page.locator('main[data-testid="item-page"][data-state="ready"]'), 'item page');
  const itemId = Number(await page.getByTestId('item').getAttribute('data-item-id'));
  assert.ok(itemId > 0, `item id ${itemId}`);
  assert.equal(await textOf(page.getByTestId('item-title')), title);
  return { username, itemId };
}

test(
  'the author attaches a file with progress, downloads it back, cancels one and is refused a fake PNG',
  { timeout: 4 * TEST_TIMEOUT_MS },
  async () => {
    const allow = [LOGGED_OUT_ME, { method: 'POST', path: UPLOADS_PATH, status: 415 }];
    const { context, page, problems, cspViolations } = await openPage(allow);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'shoal-upload-'));
    // A name that looks like markup and is not ASCII (and has no '/', which a file on
    // disk cannot): it travels percent-encoded and must come back as the same text.
    const bigName = `zufällig <b>6 MiB & "🐟" ${uniqueWord(4)}.bin`;
    const bigPath = path.join(dir, bigName);
    const bigBytes = randomBytes(BIG_SIZE);
    await writeFile(bigPath, bigBytes);
    const cancelPath = path.join(dir, 'cancel-me.bin');
    await writeFile(cancelPath, randomBytes(4 * MIB));
    // Uploads in the order the page sent them and the answers it got.
    const uploads = [];
    page.on('request', (req) => {
      if (req.method() === 'POST' && pathOf(req.url()) === UPLOADS_PATH) {
        const h = req.headers();
        uploads.push({
          event: 'request',
          url: req.url(),
          name: decodeURIComponent(h['x-file-name'] ?? ''),
          rawName: h['x-file-name'],
          type: h['content-type'],
          csrf: h['x-csrf-token'],
        });
      }
    });
    page.on('response', (res) => {
      if (res.request().method() === 'POST' && pathOf(res.url()) === UPLOADS_PATH) {
        const name = decodeURIComponent(res.request().headers()['x-file-name'] ?? '');
        uploads.push({ event: 'response', name, status: res.status() });
      }
    });
    const cdp = await context.newCDPSession(page);
    try {
      const { itemId } = await signUpAndPost(page, uniqueWord());
      await waitForAttachments(page, 0, 'no attachments yet');
      assert.equal(await textOf(page.getByTestId('attachments-empty')), 'No attachments.');
      await waitFor(page, page.getByTestId('upload-form'), 'upload form for the author');
      assert.equal(await page.getByTestId('upload-submit').isDisabled(), true, 'Attach needs a file');
      assert.equal(await page.getByLabel('Files to attach').count(), 1, 'the file input has a label');
      assertNoProblems(problems, 'on the new item');

      // --- the big file, throttled, with a moving progress bar ---
      const progress = await recordProgress(page);
      await throttleUploads(cdp, PROGRESS_BYTES_PER_S);
      await page.getByTestId('upload-input').setInputFiles(bigPath);
      assert.equal(await textOf(page.getByTestId('upload-submit')), 'Attach');
      await page.getByTestId('upload-submit').click();
      await waitFor(
        page,
        page.locator('[data-testid="upload-progress"]:not([data-loaded="0"])'),
        'progress bar moving',
      );
      assert.match(await textOf(page.getByTestId('upload-progress-text')), /^\d+% — .+ of 6\.0 MiB$|sent; waiting/);
      assert.equal(await page.getByTestId('upload-input').isDisabled(), true, 'no new choice while sending');
      await screenshot(page, 'upload-progress');
      await waitFor(
        page,
        page.locator('[data-testid="upload-result"][data-outcome="attached"]'),
        'big file attached',
        { timeout: UPLOAD_TIMEOUT_MS },
      );
      await throttleUploads(cdp, -1);
      const samples = await progress();
      const between = samples.filter((s) => s.value > 0 && s.value < s.max);
      assert.ok(
        between.length >= 1,
        `the progress bar showed a value between 0 and max: ${JSON.stringify(samples.slice(0, 20))}`,
      );
      assert.ok(
        samples.some((s) => s.max === BIG_SIZE),
        `the bar's max is the file size: ${JSON.stringify(samples.slice(-5))}`,
      );
      const values = samples.filter((s) => s.max === BIG_SIZE).map((s) => s.value);
      assert.deepEqual(values, [...values].sort((a, b) => a - b), 'progress never goes back');
      assert.equal(await page.getByTestId('upload-status').count(), 0, 'the bar is gone when done');

      const sent = uploads.find((u) => u.event === 'request');
      assert.equal(new URL(sent.url).searchParams.get('item_id'), String(itemId));
      assert.equal(sent.rawName, encodeURIComponent(bigName), 'X-File-Name is percent-encoded');
      assert.equal(sent.type, 'application/octet-stream');
      assert.equal(sent.csrf?.length, CSRF_TOKEN_LENGTH, 'X-CSRF-Token sent');

      await waitForAttachments(page, 1, 'the big file listed');
      let listed = await listedAttachments(page);
      assert.equal(listed[0].name, bigName, 'name shown as sent');
      assert.equal(await page.locator('[data-testid="attachment-list"] b').count(), 0, 'no markup from a name');
      assert.equal(listed[0].size, BIG_SIZE);
      assert.equal(listed[0].sizeText, '6.0 MiB');
      assert.equal(listed[0].type, 'application/octet-stream');
      assert.equal(listed[0].href, `/api/uploads/${listed[0].id}`);
      assert.equal(listed[0].download, bigName, 'the link downloads');
      let fromApi = await apiAttachments(context, itemId);
      assert.equal(fromApi.length, 1);
      assert.equal(fromApi[0].id, listed[0].id);
      assert.equal(fromApi[0].size, BIG_SIZE);
      assert.equal(fromApi[0].sha256, sha256(bigBytes), 'the server hashed the same bytes');
      await screenshot(page, 'upload-item');

      // --- download it back through the link, with the session cookie ---
      const res = await context.request.get(url(listed[0].href), { failOnStatusCode: false });
      const downloaded = await res.body();
      const headers = res.headers();
      await res.dispose();
      assert.equal(res.status(), 200, 'download status');
      assert.equal(downloaded.length, BIG_SIZE, 'downloaded length');
      assert.equal(sha256(downloaded), sha256(bigBytes), 'downloaded bytes are the uploaded bytes');
      assert.ok(downloaded.equals(bigBytes), 'byte for byte');
      assert.match(headers['content-disposition'] ?? '', /^attachment\b/, 'served as an attachment');
      assert.equal(headers['x-content-type-options'], 'nosniff');
      // And through a click, as a person would.
      const [download] = await Promise.all([
        page.waitForEvent('download', { timeout: STEP_TIMEOUT_MS }),
        page.getByTestId('attachment-download').first().click(),
      ]);
      const clickedPath = await download.path();
      assert.equal(sha256(await readFile(clickedPath)), sha256(bigBytes), 'the clicked download has the same bytes');
      assertNoProblems(problems, 'after the big upload');

      // --- Cancel mid-way: nothing is attached ---
      await throttleUploads(cdp, CANCEL_BYTES_PER_S);
      await page.getByTestId('upload-input').setInputFiles(cancelPath);
      await page.getByTestId('upload-submit').click();
      await waitFor(
        page,
        page.locator('[data-testid="upload-progress"]:not([data-loaded="0"])'),
        'second upload under way',
      );
      const loaded = Number(await page.getByTestId('upload-progress').getAttribute('data-loaded'));
      assert.ok(loaded > 0 && loaded < 4 * MIB, `cancelled mid-way: ${loaded} bytes sent`);
      const abortSeen = page.waitForEvent('requestfailed', {
        predicate: (req) => pathOf(req.url()) === UPLOADS_PATH,
        timeout: STEP_TIMEOUT_MS,
      });
      await page.getByTestId('upload-cancel').click();
      const abortedReq = await abortSeen;
      assert.equal(abortedReq.failure()?.errorText, 'net::ERR_ABORTED', 'the browser aborted the upload');
      await waitFor(
        page,
        page.locator('[data-testid="upload-result"][data-outcome="cancelled"]'),
        'cancelled',
      );
      await throttleUploads(cdp, -1);
      assert.equal(await textOf(page.getByTestId('upload-result-name')), '“cancel-me.bin”');
      assert.equal(await page.getByTestId('upload-status').count(), 0, 'no progress bar after Cancel');
      assert.equal(await page.getByTestId('upload-input').isEnabled(), true, 'the picker is back');
      // The browser reports the request it aborted; that one is expected.
      const abortedLine = `^request failed: POST \\S*${escapeRegExp(UPLOADS_PATH)}\\?\\S*: net::ERR_ABORTED$`;
      forgive(problems, new RegExp(abortedLine));
      assertNoProblems(problems, 'after Cancel');

      // --- one batch of two: a fake PNG (415), then a text file (attached) ---
      const notes = 'plain notes ✓\nsecond line\n';
      await page.getByTestId('upload-input').setInputFiles([
        { name: 'picture.png', mimeType: 'image/png', buffer: Buffer.from('this is text, not a PNG\n') },
        { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from(notes) },
      ]);
      assert.equal(await textOf(page.getByTestId('upload-submit')), 'Attach 2 files');
      uploads.length = 0;
      await page.getByTestId('upload-submit').click();
      await waitFor(
        page,
        page.locator('[data-testid="upload-result"]:nth-child(2):not([data-outcome="cancelled"])'),
        'both files answered',
      );
      const results = await page
        .locator('[data-testid="upload-result"]')
        .evaluateAll((all) => all.map((r) => ({ outcome: r.dataset.outcome, text: r.textContent })));
      assert.equal(results.length, 2);
      assert.equal(results[0].outcome, 'failed', `fake PNG refused: ${results[0].text}`);
      assert.match(
        results[0].text,
        /^“picture\.png” Not attached\. The content does not match its type \(image\/png\)\./,
      );
      assert.equal(results[1].outcome, 'attached', `text file attached: ${results[1].text}`);
      assert.deepEqual(
        uploads.map((u) => `${u.event} ${u.name}${u.status ? ` ${u.status}` : ''}`),
        ['request picture.png', 'response picture.png 415', 'request notes.txt', 'response notes.txt 201'],
        'one upload after another',
      );
      assert.equal(uploads[2].type, 'text/plain');

      await waitForAttachments(page, 2, 'the text file listed');
      listed = await listedAttachments(page);
      assert.deepEqual(
        listed.map((a) => [a.name, a.size, a.type]),
        [
          [bigName, BIG_SIZE, 'application/octet-stream'],
          ['notes.txt', Buffer.byteLength(notes), 'text/plain'],
        ],
        'neither the cancelled nor the refused file is listed',
      );
      assert.equal(listed[1].sizeText, `${Buffer.byteLength(notes)} B`);
      fromApi = await apiAttachments(context, itemId);
      assert.deepEqual(
        fromApi.map((a) => a.name),
        [bigName, 'notes.txt'],
        'the server lists neither the cancelled nor the refused file',
      );

      // A reload reads the list from the server alone.
      await page.reload({ timeout: STEP_TIMEOUT_MS });
      await waitForAttachments(page, 2, 'after reload');
      assert.deepEqual(
        (await listedAttachments(page)).map((a) => a.id),
        fromApi.map((a) => a.id),
      );

      assertNoProblems(problems, 'at the end');
      assert.deepEqual(await cspViolations(), [], 'no CSP violations');
    } finally {
      await throttleUploads(cdp, -1).catch(() => undefined);
      await screenshot(page, 'upload');
      await context.close();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

// --- stubbed answers ------------------------------------------------------

function json(status, body, headers = {}) {
  return { status, contentType: 'application/json', headers, body: JSON.stringify(body) };
}

function errorBody(code, message) {
  return { error: { code, message } };
}

test('upload failures are explained, a stale token is renewed, names stay text', STUBBED_TEST, async () => {
  const userId = 5;
  const itemId = 7;
  const hostile = '<img src=x onerror="window.__shoalXss=1">.png';
  const allow = [
    { method: 'POST', path: UPLOADS_PATH, status: 403 },
    { method: 'POST', path: UPLOADS_PATH, status: 413 },
    { method: 'POST', path: UPLOADS_PATH, status: 503 },
    { method: 'POST', path: UPLOADS_PATH, status: 504 },
  ];
  const { context, page, problems, cspViolations } = await openPage(allow);
  let token = 'a'.repeat(CSRF_TOKEN_LENGTH);
  let meCalls = 0;
  const sentTokens = [];
  const attachment = (id, name, size) => ({
    id,
    item_id: itemId,
    owner_id: userId,
    owner: 'stub',
    name,
    content_type: 'text/plain',
    size,
    sha256: '0'.repeat(64),
    created_at: Date.now() - 60_000 + id,
    url: `/api/uploads/${id}`,
  });
  const listed = [{ ...attachment(1, hostile, 1536), url: 'javascript:window.__shoalXss=2' }];
  const answers = [
    json(413, errorBody('too_large', 'file is larger than 100 MiB')),
    json(413, errorBody('quota_exceeded', 'storage quota of 1 GiB reached')),
    json(503, errorBody('unavailable', 'storage unavailable'), { 'Retry-After': '7' }),
    json(504, errorBody('timeout', 'upload too slow')),
    'connectionreset',
    json(403, errorBody('csrf', 'missing or wrong CSRF token')),
    'created',
  ];
  // The stubbed session is logged in, so the page opens its live connection: answer it here too.
  await stubLiveSocket(page);
  await page.route(
    (u) => pathOf(u.href) === '/api/me',
    (route) => {
      meCalls++;
      return route.fulfill(json(200, { user: { id: userId, username: 'stub' }, csrf_token: token }));
    },
  );
  await page.route(
    (u) => pathOf(u.href) === `/api/items/${itemId}`,
    (route) =>
      route.fulfill(
        json(200, {
          item: {
            id: itemId,
            title: 'stubbed item',
            body: 'text',
            author: 'stub',
            author_id: userId,
            created_at: Date.now() - 3_600_000,
            views: 1,
          },
        }),
      ),
  );
  await page.route(
    (u) => pathOf(u.href) === `/api/items/${itemId}/attachments`,
    (route) => route.fulfill(json(200, { attachments: listed })),
  );
  await page.route(
    (u) => pathOf(u.href) === UPLOADS_PATH,
    (route) => {
      const req = route.request();
      sentTokens.push(req.headers()['x-csrf-token']);
      const answer = answers.shift();
      if (answer === 'connectionreset') return route.abort('connectionreset');
      if (answer === 'created') {
        const stored = attachment(2, decodeURIComponent(req.headers()['x-file-name']), 'fresh'.length);
        listed.push(stored);
        return route.fulfill(json(201, { attachment: stored }));
      }
      return route.fulfill(answer);
    },
  );
  try {
    await page.goto(url(`/items/${itemId}`), { timeout: STEP_TIMEOUT_MS });
    await waitFor(page, page.locator('main[data-testid="item-page"][data-state="ready"]'), 'stubbed item');
    await waitForAttachments(page, 1, 'stubbed list');
    const [row] = await listedAttachments(page);
    assert.equal(row.name, hostile, 'a hostile name is text');
    assert.equal(row.sizeText, '1.5 KiB');
    assert.equal(row.href, '/api/uploads/1', 'a link elsewhere is replaced by the download path');
    assert.equal(await page.locator('[data-testid="attachments"] img').count(), 0);
    assert.equal(await page.evaluate(() => window.__shoalXss), undefined, 'no script ran');

    // Five files, five failures: each says why, and the batch goes on after each.
    const files = ['big.bin', 'quota.bin', 'busy.bin', 'slow.bin', 'cut.bin'].map((name) => ({
      name,
      mimeType: 'application/octet-stream',
      buffer: Buffer.from(`bytes of ${name}`),
    }));
    await page.getByTestId('upload-input').setInputFiles(files);
    await page.getByTestId('upload-submit').click();
    await waitFor(page, page.locator('[data-testid="upload-result"]:nth-child(5)'), 'five answers');
    await waitFor(page, page.locator('[data-testid="upload-submit"]:disabled'), 'picker cleared');
    const texts = await page
      .locator('[data-testid="upload-result"]')
      .evaluateAll((all) => all.map((r) => `${r.dataset.outcome}: ${r.textContent}`));
    assert.deepEqual(texts, [
      'failed: “big.bin” Not attached. Too large. The server says: “file is larger than 100 MiB”.',
      'failed: “quota.bin” Not attached. It would go over your storage quota. The server says: “storage quota of 1 GiB reached”.',
      'failed: “busy.bin” Not attached. The upload service is unavailable. Try again in 7 seconds.',
      'failed: “slow.bin” Not attached. The upload took too long and was stopped. Try again later.',
      'failed: “cut.bin” Not attached. The connection broke off during the upload. Check the connection and try again.',
    ]);
    assert.equal(await page.getByTestId('upload-results').getAttribute('aria-live'), 'polite', 'results are announced');
    // The broken connection is reported by the browser; it was made on purpose.
    const cut = forgive(problems, /ERR_CONNECTION_RESET/);
    assert.ok(cut >= 1, 'the broken connection was seen');

    // A stale token: /api/me is asked once more and the file is sent again with the new one.
    const meBefore = meCalls;
    token = 'b'.repeat(CSRF_TOKEN_LENGTH);
    await page.getByTestId('upload-input').setInputFiles({
      name: 'fresh.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from('fresh'),
    });
    await page.getByTestId('upload-submit').click();
    const attached = page.locator('[data-testid="upload-result"][data-outcome="attached"]');
    await waitFor(page, attached, 'attached after renewal');
    assert.equal(meCalls, meBefore + 1, '/api/me asked once');
    assert.deepEqual(sentTokens.slice(-2), ['a'.repeat(CSRF_TOKEN_LENGTH), token], 'sent again with the new token');
    await waitForAttachments(page, 2, 'list with the new file');
    assert.deepEqual(
      (await listedAttachments(page)).map((a) => [a.name, a.sizeText]),
      [
        [hostile, '1.5 KiB'],
        ['fresh.txt', '5 B'],
      ],
    );

    assertNoProblems(problems, 'with stubbed uploads');
    assert.deepEqual(await cspViolations(), [], 'no CSP violations');
  } finally {
    await screenshot(page, 'upload-stubbed');
    await context.close();
  }
});
