// Shared set-up of the browser tests: settings from the environment and one
// Chromium (Debian's, driven by playwright-core) per test file, launched with
// the flags that work on these machines and closed after the file's tests.

import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const BASE_URL = process.env.SHOAL_URL;
export const ARTIFACTS_DIR = process.env.SHOAL_ARTIFACTS;
export const CHROMIUM_PATH = process.env.SHOAL_CHROMIUM || '/usr/bin/chromium';
export const STEP_TIMEOUT_MS = Number(process.env.SHOAL_BROWSER_TIMEOUT_MS || 10_000);
export const TEST_TIMEOUT_MS = 6 * STEP_TIMEOUT_MS;

/** A 0/1 setting; anything else stops the run, so a typo does not quietly change it. */
function flag(name) {
  const value = process.env[name] ?? '';
  if (!['', '0', '1'].includes(value)) throw new Error(`${name} must be 0 or 1, not "${value}"`);
  return value === '1';
}

/** Accept a certificate that does not verify (the compose stack's self-signed one):
 *  only when asked, so a broken certificate fails every other run. */
export const IGNORE_HTTPS_ERRORS = flag('SHOAL_BROWSER_IGNORE_HTTPS_ERRORS');
/** Run only the tests that use the stack's real answers; skip those that answer
 *  calls from inside the browser (page.route, a fake clock). */
export const SKIP_STUBBED = flag('SHOAL_BROWSER_SKIP_STUBBED');
/** Options of a test that stubs answers: skipped with SHOAL_BROWSER_SKIP_STUBBED=1. */
export const STUBBED_TEST = { timeout: TEST_TIMEOUT_MS, skip: SKIP_STUBBED && 'SHOAL_BROWSER_SKIP_STUBBED=1' };
/** Options of every browser context the tests open. */
export const CONTEXT_OPTIONS = { ignoreHTTPSErrors: IGNORE_HTTPS_ERRORS };

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launch Chromium before the file's tests and close it after; returns a
 *  getter for the running browser. Playwright gives every launch its own
 *  temporary profile and removes it on close. */
export function useBrowser() {
  let browser;
  before(async () => {
    assert.ok(BASE_URL, 'SHOAL_URL must be set to the edge (or load balancer), e.g. http://127.0.0.1:8080');
    browser = await chromium.launch({
      executablePath: CHROMIUM_PATH,
      args: CHROMIUM_ARGS,
      timeout: STEP_TIMEOUT_MS,
    });
  });
  after(async () => {
    await browser?.close();
  });
  return () => browser;
}

/** A logged-out browser asks /api/me and gets 401: that is how the page learns it. */
export const LOGGED_OUT_ME = { method: 'GET', path: '/api/me', status: 401 };
export const CSRF_TOKEN_LENGTH = 43;

/** Lowercase letters only, so full-text search sees one plain word. */
export function uniqueWord(length = 12) {
  return Array.from(randomBytes(length), (b) => String.fromCharCode(97 + (b % 26))).join('');
}

export const CLUSTER_PATH = '/api/cluster';

/** True for the cluster panel's poll of /api/cluster. */
export function isClusterPoll(url) {
  try {
    return new URL(url).pathname === CLUSTER_PATH;
  } catch {
    return false;
  }
}

/** The path of a URL ('' when it cannot be parsed). */
export function pathOf(url) {
  try {
    return new URL(url).pathname;
  } catch {
    return '';
  }
}

/**
 * Records everything that must not happen while the page is used. `expectedStatus`
 * is an HTTP status a test makes /api/cluster answer on purpose: its response and
 * the console line Chromium logs for it are not problems. A poll cut by closing the
 * page is not one either. `allow` lists more answers a test expects, as
 * `{ path, status }` (optionally `method`); the test may add entries later, since
 * the array is read at each event.
 */
export function watchForProblems(page, { expectedStatus = null, allow = [] } = {}) {
  const problems = [];
  const allowed = (url, status, method) =>
    allow.some(
      (a) =>
        a.status === status &&
        a.path === pathOf(url) &&
        (a.method === undefined || method === undefined || a.method === method),
    );
  const expected = (url, status, method) =>
    (status === expectedStatus && isClusterPoll(url)) || allowed(url, status, method);
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const logged = /status of (\d{3})\b/.exec(msg.text());
    if (logged && expected(msg.location().url, Number(logged[1]))) return;
    problems.push(`console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('requestfailed', (req) => {
    const reason = req.failure()?.errorText;
    if (isClusterPoll(req.url()) && reason === 'net::ERR_ABORTED') return;
    problems.push(`request failed: ${req.method()} ${req.url()}: ${reason}`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400 && !expected(res.url(), res.status(), res.request().method())) {
      problems.push(`error status: ${res.request().method()} ${res.url()} -> ${res.status()}`);
    }
  });
  return problems;
}

/**
 * Records every Content-Security-Policy violation the page reports (the event fires
 * even where Chromium's console line might be missed). Call before the first
 * navigation; the returned function reads the list from the current document.
 */
export async function recordCspViolations(page) {
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(
        `${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`,
      );
    });
  });
  return () => page.evaluate(() => window.__cspViolations ?? []);
}

export function assertNoProblems(problems, step) {
  assert.deepEqual(problems, [], `problems ${step}`);
}

/** An absolute URL of the stack under test. */
/*  page.goto that tries again when Chromium aborts a navigation because
    the machine's network changed (podman adds and removes interfaces
    while the containers tests run): a signal about the host, not the app.  */
export async function navigate(page, href, options = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await page.goto(href, { timeout: STEP_TIMEOUT_MS, ...options });
    } catch (e) {
      if (attempt >= 3 || !String(e.message).includes('ERR_NETWORK_CHANGED')) throw e;
    }
  }
}

export function url(pathname) {
  return new URL(pathname, BASE_URL).href;
}

// The problems seen on each page opened by openWatchedPage (console and page errors,
// failed requests), for the failure message of a step that timed out.
const PROBLEMS = new WeakMap();

/** A new context and page of the browser from getBrowser (useBrowser's getter),
 *  watched for problems (`allow`: answers that are not problems, see
 *  watchForProblems) and CSP violations. */
export async function openWatchedPage(getBrowser, allow = []) {
  const context = await getBrowser().newContext(CONTEXT_OPTIONS);
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const problems = watchForProblems(page, { allow });
  PROBLEMS.set(page, problems);
  const cspViolations = await recordCspViolations(page);
  return { context, page, problems, cspViolations };
}

/** The problems seen so far on a page from openWatchedPage ([] for others). */
export function problemsOf(page) {
  return PROBLEMS.get(page) ?? [];
}

/** What `read` (run in the page) says the page shows, for failure messages; why
 *  not, when the page cannot be read. */
export function readPage(page, read) {
  return page.evaluate(read).catch((err) => `page unreadable: ${err.message}`);
}

/**
 * The waits of a file's steps; each fails with what `describe(page)` says the page
 * shows and the problems seen on it (a page from openWatchedPage).
 * `waitFor(page, locator, step, options)`: until `locator` is there (or as
 * `options.state` says); `waitForAccount(page, state, step)`: until the account
 * menu is in `state` ('logged-in', 'logged-out').
 */
export function stepWaits(describe) {
  async function waitFor(page, locator, step, options = {}) {
    try {
      await locator.waitFor({ timeout: STEP_TIMEOUT_MS, ...options });
    } catch (err) {
      const seen = problemsOf(page);
      assert.fail(
        `${step}: ${err.message.split('\n')[0]}; page: ${await describe(page)}` +
          (seen.length ? `; problems: ${seen.join('; ')}` : ''),
      );
    }
  }
  async function waitForAccount(page, state, step) {
    await waitFor(page, page.locator(`[data-testid="account"][data-state="${state}"]`), step);
  }
  return { waitFor, waitForAccount };
}

/** A full-page screenshot into SHOAL_ARTIFACTS (none without it). */
export async function screenshot(page, name) {
  if (!ARTIFACTS_DIR) return;
  await mkdir(ARTIFACTS_DIR, { recursive: true });
  await page
    .screenshot({ path: path.join(ARTIFACTS_DIR, `${name}.png`), fullPage: true })
    .catch((err) => console.error(`screenshot failed: ${err.message}`));
}

/** The trimmed text of a locator ("" when it has none). */
export async function textOf(locator) {
  return (await locator.textContent())?.trim() ?? '';
}

export const LIVE_PATH = '/ws';

/** The page's live indicator once it is live and, with `channel`, subscribed to it. */
export function liveIndicator(page, channel) {
  const subscribed = channel === undefined ? '' : `[data-channels~=${JSON.stringify(channel)}]`;
  return page.locator(`[data-testid="live-indicator"][data-state="live"]${subscribed}`);
}

/**
 * Answers the page's live connection (GET /ws) from inside the browser like an edge
 * on which nothing happens: `hello`, `subscribed` for every subscribe (as for a
 * first subscription: the page loads over REST), `pong` for `ping`. For tests that
 * answer the API from inside the browser too, so that no real socket (which the
 * stubbed session could not open) makes the page retry.
 */
export async function stubLiveSocket(page, edge = 'stub-edge') {
  await page.routeWebSocket(
    (u) => pathOf(u.href) === LIVE_PATH,
    (ws) => {
      ws.onMessage((message) => {
        let msg;
        try {
          msg = JSON.parse(String(message));
        } catch {
          return;
        }
        if (msg.type === 'subscribe') ws.send(JSON.stringify({ type: 'subscribed', channel: msg.channel }));
        else if (msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong' }));
      });
      ws.send(JSON.stringify({ type: 'hello', edge, user: 'stub' }));
    },
  );
}
