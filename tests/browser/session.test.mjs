// End-to-end test of the session counter page through a real browser: Debian's
// Chromium driven by playwright-core, against a running Shoal stack at SHOAL_URL.
// It checks what a person sees (the counter goes up on Reload and on a page reload,
// "Forget me" starts a new session) and what they cannot see (the session cookie is
// HttpOnly and SameSite=Lax), and fails on any console error, page error, failed or
// error-status request (which includes CSP violations).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  ARTIFACTS_DIR,
  assertNoProblems,
  watchForProblems,
  BASE_URL,
  CONTEXT_OPTIONS,
  STEP_TIMEOUT_MS,
  STUBBED_TEST,
  TEST_TIMEOUT_MS,
  useBrowser,
} from './browser.mjs';


const COOKIE_NAME = 'shoal_sid';
const PLACEHOLDER = '—';
const getBrowser = useBrowser();

/* The cluster panel polls /api/cluster every second (cluster.test.mjs tests it). An
   edge without that endpoint answers 404, which the panel shows as "cluster view
   unavailable": that 404 is expected here, it is no fault of the counter. */
const CLUSTER_ABSENT = { expectedStatus: 404 };

/**
 * Waits until the page is ready and shows `expected` views, or fails early with the
 * page's own error message if it reaches the error state first.
 */
async function waitForViews(page, expected, step) {
  const shown = page.locator('main[data-state="ready"] [data-testid="views"]', {
    hasText: new RegExp(`^\\s*${expected}\\s*$`),
  });
  const failed = page.locator('main[data-state="error"]');
  try {
    await shown.or(failed).waitFor({ timeout: STEP_TIMEOUT_MS });
  } catch (err) {
    const state = await page.locator('main').getAttribute('data-state').catch(() => null);
    const views = await page.getByTestId('views').textContent().catch(() => null);
    assert.fail(`${step}: expected ${expected} views, page shows ${views} (state ${state}): ${err.message}`);
  }
  if (await failed.count()) {
    const message = await page.getByTestId('error').textContent();
    assert.fail(`${step}: page is in the error state: ${message}`);
  }
  assert.equal(await page.getByTestId('error').textContent(), '', `${step}: no error shown`);
}

async function readViews(page) {
  const text = (await page.getByTestId('views').textContent()).trim();
  assert.match(text, /^\d+$/, `views is a number, got "${text}"`);
  return Number(text);
}

async function assertServedBy(page, step) {
  for (const id of ['edge', 'session-instance']) {
    const text = (await page.getByTestId(id).textContent()).trim();
    assert.ok(text !== '' && text !== PLACEHOLDER, `${step}: ${id} is shown, got "${text}"`);
  }
  const stamp = await page.getByTestId('created-at').locator('time').getAttribute('datetime');
  assert.ok(stamp && !Number.isNaN(Date.parse(stamp)), `${step}: created-at is a date, got "${stamp}"`);
}

/**
 * Collects the Set-Cookie headers that set the session cookie. The browser's cookie
 * jar cannot tell "SameSite=Lax" from no SameSite at all (Chromium defaults to Lax),
 * so the attributes the server sends are checked as well.
 */
function watchSessionSetCookies(page) {
  const pending = [];
  page.on('response', (res) => {
    const headers = res
      .headersArray()
      .then((all) =>
        all
          .filter((h) => h.name.toLowerCase() === 'set-cookie')
          .flatMap((h) => h.value.split('\n'))
          .filter((v) => v.trim().startsWith(`${COOKIE_NAME}=`)),
      )
      .catch(() => []);
    pending.push(headers);
  });
  return async () => (await Promise.all(pending)).flat();
}

function assertSetCookieAttributes(setCookies, step) {
  const issued = setCookies.filter((v) => !v.trim().startsWith(`${COOKIE_NAME}=;`));
  assert.ok(issued.length > 0, `${step}: the server sent a Set-Cookie for ${COOKIE_NAME}`);
  for (const header of issued) {
    const attributes = header.split(';').slice(1).map((a) => a.trim().toLowerCase());
    assert.ok(attributes.includes('httponly'), `${step}: Set-Cookie has HttpOnly: ${header}`);
    assert.ok(attributes.includes('samesite=lax'), `${step}: Set-Cookie has SameSite=Lax: ${header}`);
  }
}

/** Returns the session cookie after checking the page's script cannot read it. */
async function sessionCookie(context, page, step) {
  // Not context.cookies(BASE_URL): Playwright's URL filter drops Secure cookies on
  // http://127.0.0.1, which Chromium itself keeps and sends (loopback is trustworthy).
  const host = new URL(BASE_URL).hostname;
  const cookies = (await context.cookies()).filter(
    (c) => c.name === COOKIE_NAME && (c.domain === host || host.endsWith(`.${c.domain.replace(/^\./, '')}`)),
  );
  assert.equal(cookies.length, 1, `${step}: exactly one ${COOKIE_NAME} cookie`);
  const [cookie] = cookies;
  assert.ok(cookie.value.length > 0, `${step}: ${COOKIE_NAME} has a value`);
  assert.equal(cookie.httpOnly, true, `${step}: ${COOKIE_NAME} is HttpOnly`);
  assert.equal(cookie.sameSite, 'Lax', `${step}: ${COOKIE_NAME} is SameSite=Lax`);
  if (new URL(BASE_URL).protocol === 'https:') {
    assert.equal(cookie.secure, true, `${step}: ${COOKIE_NAME} is Secure over https`);
  }
  const visible = await page.evaluate(() => document.cookie);
  assert.ok(!visible.includes(`${COOKIE_NAME}=`), `${step}: document.cookie does not expose ${COOKIE_NAME}`);
  return cookie;
}

test('session counter counts views, survives a reload and can be forgotten', { timeout: TEST_TIMEOUT_MS }, async () => {
  const context = await getBrowser().newContext(CONTEXT_OPTIONS);
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const problems = watchForProblems(page, CLUSTER_ABSENT);
  const sessionSetCookies = watchSessionSetCookies(page);
  try {
    await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
    assert.equal(await page.title(), 'Shoal — session counter');

    // A fresh browser context has no cookie, so the first load starts a session at 1.
    await waitForViews(page, 1, 'first load');
    const first = await readViews(page);
    await assertServedBy(page, 'first load');
    const original = await sessionCookie(context, page, 'first load');
    assertSetCookieAttributes(await sessionSetCookies(), 'first load');
    assertNoProblems(problems, 'on first load');

    await page.getByTestId('reload').click();
    await waitForViews(page, first + 1, 'after Reload');
    await assertServedBy(page, 'after Reload');
    assertNoProblems(problems, 'after Reload');

    await page.reload({ timeout: STEP_TIMEOUT_MS });
    await waitForViews(page, first + 2, 'after page reload');
    await assertServedBy(page, 'after page reload');
    const kept = await sessionCookie(context, page, 'after page reload');
    assert.equal(kept.value, original.value, 'the session cookie is kept across reloads');
    assertNoProblems(problems, 'after page reload');

    await page.getByTestId('forget').click();
    await waitForViews(page, 1, 'after Forget me');
    await assertServedBy(page, 'after Forget me');
    const renewed = await sessionCookie(context, page, 'after Forget me');
    assert.notEqual(renewed.value, original.value, 'Forget me starts a session with a new id');
    assertSetCookieAttributes(await sessionSetCookies(), 'after Forget me');
    assertNoProblems(problems, 'after Forget me');
  } finally {
    if (ARTIFACTS_DIR) {
      await mkdir(ARTIFACTS_DIR, { recursive: true });
      await page
        .screenshot({ path: path.join(ARTIFACTS_DIR, 'session.png'), fullPage: true })
        .catch((err) => console.error(`screenshot failed: ${err.message}`));
    }
    await context.close();
  }
});

test('an error reply is shown in the alert and the last good values stay', STUBBED_TEST, async () => {
  const context = await getBrowser().newContext(CONTEXT_OPTIONS);
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  try {
    await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
    await waitForViews(page, 1, 'first load');
    const edge = await page.getByTestId('edge').textContent();

    // The real stack answers 503 only when a backing store is down (the chaos tier
    // covers that); here the browser itself answers the next call the same way.
    const message = 'The session store is unavailable.';
    await page.route('**/api/session', (route) =>
      route.fulfill({
        status: 503,
        headers: { 'Content-Type': 'application/json', 'Retry-After': '3' },
        body: JSON.stringify({ error: { code: 'unavailable', message } }),
      }),
    );
    await page.getByTestId('reload').click();
    await page.locator('main[data-state="error"]').waitFor();
    assert.equal(await page.getByTestId('error').textContent(), `${message} Try again in 3 seconds.`);
    assert.equal(await page.getByRole('alert').textContent(), `${message} Try again in 3 seconds.`);
    assert.equal(await readViews(page), 1, 'the last good counter stays on screen');
    assert.equal(await page.getByTestId('edge').textContent(), edge, 'the last good edge stays on screen');

    await page.unroute('**/api/session');
    await page.getByTestId('reload').click();
    await waitForViews(page, 2, 'after recovery');
    assert.deepEqual(pageErrors, [], 'no page errors');
  } finally {
    await context.close();
  }
});
