// End-to-end test of the page's cluster panel through a real browser: Debian's
// Chromium driven by playwright-core, against a running Shoal stack at SHOAL_URL.
// The panel polls GET /api/cluster every second and shows one row per service
// instance. These tests check that the live stack's session and edge instances show
// up as `up`; optionally (SHOAL_KILL_SESSION_PID) that a SIGKILLed session instance
// is shown `dead` or restarted; that a failed poll shows the status line and keeps
// the last good table; that an edge without /api/cluster gives a quiet "unavailable"
// line; and that polling stops while the tab is hidden.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  ARTIFACTS_DIR,
  assertNoProblems,
  CLUSTER_PATH,
  watchForProblems,
  BASE_URL,
  CONTEXT_OPTIONS,
  STEP_TIMEOUT_MS,
  STUBBED_TEST,
  TEST_TIMEOUT_MS,
  useBrowser,
} from './browser.mjs';

// Optional: a session instance of the stack to kill, by pid, and its instance name.
const KILL_PID = process.env.SHOAL_KILL_SESSION_PID;
const KILL_NAME = process.env.SHOAL_KILL_SESSION_NAME;
const KILL_WAIT_MS = 10_000;

const getBrowser = useBrowser();


/** Attribute selector with a quoted value (instance names are plain, but be safe). */
function attr(name, value) {
  return `[${name}=${JSON.stringify(String(value))}]`;
}

function rowSelector({ service, instance, state } = {}) {
  let selector = '[data-testid="cluster"] [data-testid="instance-row"]';
  if (service !== undefined) selector += attr('data-service', service);
  if (instance !== undefined) selector += attr('data-instance', instance);
  if (state !== undefined) selector += attr('data-state', state);
  return selector;
}

/** What the panel shows now, for failure messages and diagnostics. */
async function describePanel(page) {
  return page
    .evaluate(() => {
      const panel = document.querySelector('[data-testid="cluster"]');
      if (!panel) return 'no cluster panel';
      const rows = [...panel.querySelectorAll('[data-testid="instance-row"]')].map(
        (r) => `${r.dataset.service}/${r.dataset.instance}=${r.dataset.state}`,
      );
      const error = panel.querySelector('[data-testid="cluster-error"]')?.textContent ?? '';
      return `rows [${rows.join(', ')}], status line "${error}"`;
    })
    .catch((err) => `panel unreadable: ${err.message}`);
}

/**
 * Waits until the panel lists a row matching `filter`; fails early with the panel's
 * status line if the edge says it has no cluster view.
 */
async function waitForRow(page, filter, step, timeout = STEP_TIMEOUT_MS) {
  const row = page.locator(rowSelector(filter)).first();
  const unavailable = page.getByTestId('cluster-error').filter({ hasText: /unavailable/i });
  try {
    await row.or(unavailable).waitFor({ timeout });
  } catch (err) {
    assert.fail(`${step}: no row ${JSON.stringify(filter)}; panel shows ${await describePanel(page)}: ${err.message}`);
  }
  if ((await row.count()) === 0) {
    assert.fail(`${step}: ${await page.getByTestId('cluster-error').textContent()}`);
  }
}

async function rowSnapshot(page) {
  return page.locator(rowSelector()).evaluateAll((rows) =>
    rows.map((r) => `${r.dataset.service}/${r.dataset.instance}`).sort(),
  );
}

async function saveArtifacts(page, name, data) {
  if (!ARTIFACTS_DIR) return;
  await mkdir(ARTIFACTS_DIR, { recursive: true });
  await page
    .screenshot({ path: path.join(ARTIFACTS_DIR, `${name}.png`), fullPage: true })
    .catch((err) => console.error(`screenshot failed: ${err.message}`));
  if (data !== undefined) {
    await writeFile(path.join(ARTIFACTS_DIR, `${name}.json`), `${JSON.stringify(data, null, 2)}\n`);
  }
}

async function openPage(options) {
  const context = await getBrowser().newContext(CONTEXT_OPTIONS);
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const problems = watchForProblems(page, options);
  return { context, page, problems };
}

test('cluster panel lists the live session and edge instances', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { context, page, problems } = await openPage();
  try {
    await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
    await waitForRow(page, { service: 'session', state: 'up' }, 'session instance up');
    await waitForRow(page, { service: 'edge', state: 'up' }, 'edge instance up');

    // Every row is complete: a state word (also the badge's text) and a group header.
    const rows = await page.locator(rowSelector()).evaluateAll((all) =>
      all.map((r) => ({
        service: r.dataset.service,
        instance: r.dataset.instance,
        state: r.dataset.state,
        badge: r.querySelector('.badge')?.textContent ?? '',
        cells: r.cells.length,
      })),
    );
    for (const row of rows) {
      assert.ok(row.instance, `row has an instance name: ${JSON.stringify(row)}`);
      assert.equal(row.badge, row.state, `the state word is shown: ${JSON.stringify(row)}`);
      assert.equal(row.cells, 8, `row has 8 columns: ${JSON.stringify(row)}`);
    }
    const groups = await page
      .locator('[data-testid="cluster"] tbody[data-service] tr.group')
      .allTextContents();
    assert.ok(groups.some((g) => /^session\b.*\d+ of \d+ live/.test(g)), `session group header: ${groups}`);
    await page.getByTestId('cluster-updated').filter({ hasText: /^updated \d+s ago$/ }).waitFor();
    assert.equal(await page.getByTestId('cluster-error').textContent(), '', 'no status line');
    assertNoProblems(problems, 'while the cluster panel polls');
  } finally {
    await saveArtifacts(page, 'cluster');
    await context.close();
  }
});

test(
  'a killed session instance is shown dead (or restarted)',
  { timeout: TEST_TIMEOUT_MS, skip: KILL_PID ? false : 'SHOAL_KILL_SESSION_PID is not set' },
  async (t) => {
    assert.ok(KILL_NAME, 'SHOAL_KILL_SESSION_NAME must name the instance of SHOAL_KILL_SESSION_PID');
    const pid = Number(KILL_PID);
    assert.ok(Number.isInteger(pid) && pid > 1, `SHOAL_KILL_SESSION_PID is a pid, got "${KILL_PID}"`);
    assert.doesNotThrow(() => process.kill(pid, 0), `process ${pid} exists`);

    const { context, page, problems } = await openPage();
    const record = { instance: KILL_NAME, pid };
    try {
      await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
      await waitForRow(page, { service: 'session', instance: KILL_NAME, state: 'up' }, `${KILL_NAME} up`);
      assertNoProblems(problems, 'before the kill');

      // Record every change of the instance's row in the page itself, so a short
      // state (absent for one poll, a restart with a fresh uptime) cannot be missed.
      await page.evaluate((name) => {
        const panel = document.querySelector('[data-testid="cluster"]');
        const log = [];
        let lastUptime = null;
        const sample = () => {
          const row = [...panel.querySelectorAll('[data-testid="instance-row"]')].find(
            (r) => r.dataset.instance === name,
          );
          const state = row ? row.dataset.state : 'absent';
          const uptime = row && row.dataset.uptimeS !== undefined ? Number(row.dataset.uptimeS) : null;
          const restarted = uptime !== null && lastUptime !== null && uptime < lastUptime;
          if (uptime !== null) lastUptime = uptime;
          const last = log[log.length - 1];
          if (!last || last.state !== state || restarted) {
            log.push({ state, uptime, restarted, at: Date.now() });
          }
        };
        sample();
        new MutationObserver(sample).observe(panel, {
          subtree: true,
          childList: true,
          attributes: true,
          characterData: true,
        });
        window.__shoalRowLog = log;
      }, KILL_NAME);

      const killedAt = Date.now();
      process.kill(pid, 'SIGKILL');
      record.killedAt = killedAt;

      let outcome;
      try {
        const handle = await page.waitForFunction(
          () => {
            const log = window.__shoalRowLog;
            const dead = log.find((e) => e.state === 'dead');
            if (dead) return { outcome: 'dead', at: dead.at, log };
            const gone = log.findIndex((e) => e.state === 'absent');
            const back = gone >= 0 ? log.slice(gone).find((e) => e.state === 'up') : undefined;
            if (back) return { outcome: 'disappeared, then back up (restarted)', at: back.at, log };
            const again = log.find((e) => e.restarted && e.state === 'up');
            if (again) return { outcome: 'restarted in place (uptime reset)', at: again.at, log };
            return false;
          },
          undefined,
          { timeout: KILL_WAIT_MS },
        );
        outcome = await handle.jsonValue();
      } catch (err) {
        const log = await page.evaluate(() => window.__shoalRowLog).catch(() => null);
        record.log = log;
        assert.fail(
          `${KILL_NAME} (pid ${pid}) was neither shown dead nor restarted within ${KILL_WAIT_MS} ms; ` +
            `row states ${JSON.stringify(log?.map((e) => e.state))}; panel shows ${await describePanel(page)}: ${err.message}`,
        );
      }
      record.outcome = outcome.outcome;
      record.afterMs = outcome.at - killedAt;
      record.log = outcome.log.map((e) => ({ ...e, at: e.at - killedAt }));
      const states = outcome.log.map((e) => (e.restarted ? `${e.state} (uptime reset)` : e.state)).join(' → ');
      t.diagnostic(`${KILL_NAME} (pid ${pid}) after SIGKILL: ${record.outcome} after ${record.afterMs} ms; row: ${states}`);

      // What the edge answers while an instance dies is the stack's business (the
      // chaos tier's), so failed polls are reported, not fatal; page errors are.
      record.problems = problems;
      for (const p of problems) t.diagnostic(`during the kill: ${p}`);
      assert.deepEqual(
        problems.filter((p) => p.startsWith('page error')),
        [],
        'no page errors during the kill',
      );
    } finally {
      await saveArtifacts(page, 'cluster-kill', record);
      await context.close();
    }
  },
);

test('a failed poll shows the status line and keeps the last good table', STUBBED_TEST, async () => {
  const { context, page, problems } = await openPage({ expectedStatus: 503 });
  try {
    await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
    await waitForRow(page, {}, 'first table');
    const before = await rowSnapshot(page);

    // The next poll gets a 503 from inside the browser; the ones after it go through.
    const message = 'The health registry is unavailable.';
    let failed = 0;
    await page.route(`**${CLUSTER_PATH}`, (route) => {
      if (failed++ === 0) {
        return route.fulfill({
          status: 503,
          headers: { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' },
          body: JSON.stringify({ error: { code: 'unavailable', message } }),
        });
      }
      return route.continue();
    });

    // Read the status line and the table in one go inside the page: the next poll
    // (a second later) clears the line again.
    const shown = await (
      await page.waitForFunction(() => {
        const panel = document.querySelector('[data-testid="cluster"]');
        const error = panel.querySelector('[data-testid="cluster-error"]');
        if (!error || error.textContent === '') return false;
        return {
          error: error.textContent,
          role: error.getAttribute('role'),
          rows: [...panel.querySelectorAll('[data-testid="instance-row"]')]
            .map((r) => `${r.dataset.service}/${r.dataset.instance}`)
            .sort(),
        };
      })
    ).jsonValue();
    assert.equal(shown.role, 'status', 'the status line is a status region');
    assert.ok(shown.error.includes(message), `the status line shows the server's message: "${shown.error}"`);
    assert.deepEqual(shown.rows, before, 'the last good table stays while the poll failed');

    // Polling goes on: the next answer clears the line and the table is still there.
    await page.locator('[data-testid="cluster-error"]:empty').waitFor({ state: 'attached' });
    assert.ok((await rowSnapshot(page)).length > 0, 'the table is shown after recovery');
    assert.ok(failed >= 2, `polling went on after the failure (${failed} polls stubbed or passed)`);
    await page.unroute(`**${CLUSTER_PATH}`);
    assertNoProblems(problems, 'around the failed poll');
  } finally {
    await context.close();
  }
});

test('an edge without /api/cluster gives a quiet "unavailable" line', STUBBED_TEST, async () => {
  const { context, page, problems } = await openPage({ expectedStatus: 404 });
  try {
    await page.route(`**${CLUSTER_PATH}`, (route) =>
      route.fulfill({
        status: 404,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ error: { code: 'not_found', message: 'No such path.' } }),
      }),
    );
    await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
    await page.getByTestId('cluster-error').filter({ hasText: /cluster view unavailable/i }).waitFor();
    assert.equal(await page.locator(rowSelector()).count(), 0, 'no table without a cluster view');
    // The counter above is unaffected.
    await page.locator('main[data-state="ready"]').waitFor();
    // Chromium itself logs the 404 (allowed above); the page logs nothing.
    assertNoProblems(problems, 'with a 404 from /api/cluster');
  } finally {
    await context.close();
  }
});

test('polling stops while the tab is hidden and resumes when it is shown', STUBBED_TEST, async () => {
  const { context, page, problems } = await openPage();
  try {
    // Fake, paused timers: only the test moves time on, so "no poll for 5 s" needs no
    // sleep and no poll can slip in between two checks on a slow machine.
    const start = Date.now();
    await page.clock.install({ time: start });
    await page.clock.pauseAt(start + 1000);
    // Count the page's calls when they are made, not when they reach the network.
    await page.addInitScript((clusterPath) => {
      const original = window.fetch;
      window.__clusterFetches = 0;
      window.fetch = (input, init) => {
        const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
        if (new URL(url, location.href).pathname === clusterPath) window.__clusterFetches += 1;
        return original(input, init);
      };
    }, CLUSTER_PATH);
    // Each answer carries its number in the rps column, so the test sees each poll land.
    let answered = 0;
    await page.route(`**${CLUSTER_PATH}`, (route) => {
      answered += 1;
      return route.fulfill({
        status: 200,
        headers: { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' },
        body: JSON.stringify({
          generated_at: Date.now(),
          instances: [
            {
              service: 'session',
              instance: 'stub-1',
              state: 'up',
              address: 'tcp://127.0.0.1:1',
              version: '0.0.0',
              uptime_s: 1,
              heartbeat_age_ms: 1,
              in_flight: 0,
              rps: answered,
            },
          ],
          health: [],
        }),
      });
    });
    const fetches = () => page.evaluate(() => window.__clusterFetches);
    const pollLanded = (n) =>
      page.locator(`${rowSelector({ instance: 'stub-1' })} td:last-child`, { hasText: `${n}.0` }).waitFor();

    await page.goto(new URL('/', BASE_URL).href, { timeout: STEP_TIMEOUT_MS });
    await pollLanded(1);
    await page.clock.runFor(1000);
    await pollLanded(2);
    assert.equal(await fetches(), 2, 'one poll a second while visible');

    await page.evaluate(() => {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await page.clock.runFor(5000);
    assert.equal(await fetches(), 2, 'no poll while hidden');

    await page.evaluate(() => {
      delete document.hidden;
      delete document.visibilityState;
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await pollLanded(3);
    assert.equal(await fetches(), 3, 'one poll at once when shown again');
    await page.clock.runFor(1000);
    await pollLanded(4);
    assert.equal(await fetches(), 4, 'polling goes on once shown');
    assertNoProblems(problems, 'while hiding and showing the tab');
  } finally {
    await context.close();
  }
});
