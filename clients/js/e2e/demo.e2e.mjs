// End-to-end: the real herald binary, the demo page in headless Chromium, an order
// published over the HTTP API, the page's "printed" ack, and a server restart that the
// page must survive on its own. Run: node --test e2e/demo.e2e.mjs (see run.sh).
//
// HERALD_BIN: path to the binary (relative paths resolve from the repo root),
// default target/debug/herald. Standalone on loopback: no NATS, no token, no API key.
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, ARTIFACTS, HERALD_BIN as BIN, stepper, freePort, launchChromium, spawnLogged,
  stopProcess, waitFor200, publish as publishTo,
} from './harness.mjs';

const SCREENSHOT = path.join(ARTIFACTS, 'demo.png');
const HERALD_LOG = path.join(ARTIFACTS, 'herald-e2e.log');
const USER = 'merchant1';

const READY_TIMEOUT = 20_000;  // process start to /readyz 200
const STOP_TIMEOUT = 30_000;   // SIGTERM to exit (drain window is shortened to 1 s below)
const UI_TIMEOUT = 15_000;     // a frame reaching the page and being rendered
const RECONNECT_TIMEOUT = 60_000; // backoff may have climbed a few steps while herald was down

let port;
let base;
let herald;   // the running child process
let browser;
let page;
let log;
const pageErrors = [];
const step = stepper(); // a sequential step, skipped once an earlier one failed

describe('demo console against a real herald', { timeout: 240_000 }, () => {
  before(async () => {
    assert.ok(existsSync(BIN), `herald binary not found at ${BIN}: build it first or set HERALD_BIN`);
    mkdirSync(ARTIFACTS, { recursive: true });
    log = createWriteStream(HERALD_LOG);
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    herald = await startHerald();
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
    page.setDefaultTimeout(UI_TIMEOUT);
    page.on('pageerror', (err) => pageErrors.push(err.message));
  });

  after(async () => {
    // Whatever happened above: no herald and no browser may outlive the test.
    if (herald) await stopHerald(herald).catch(() => herald.kill('SIGKILL'));
    await browser?.close().catch(() => {});
    log?.end();
  });

  step('the page connects and the state badge says open', async () => {
    const res = await page.goto(`${base}/demo/?user=${USER}`, { timeout: UI_TIMEOUT });
    assert.equal(res.status(), 200, 'GET /demo/ must serve the demo page');
    await waitForState('open', UI_TIMEOUT);
  });

  step('a published order appears and is marked printed', async () => {
    const id = await publish({ user: USER, event: 'order', data: { id: 'A-1001', item: 'Noodles', total: 12.5 } });
    const row = await printedRow('A-1001');
    const text = await row.textContent();
    assert.match(text, /Noodles/);
    assert.match(text, /"total":12\.5/);
    assert.match(text, /printed/);
    assert.equal(await row.getAttribute('data-id'), id, 'row carries the message id from the 202 reply');
  });

  step('a broadcast shows in the banner', async () => {
    await publish({ broadcast: true, event: 'notice', data: { text: 'Kitchen closes at 22:00' } });
    await page.locator('[data-testid="banner"]', { hasText: 'Kitchen closes at 22:00' })
      .waitFor({ state: 'visible', timeout: UI_TIMEOUT });
  });

  step('after herald restarts on the same port the page reconnects by itself', async () => {
    await stopHerald(herald);
    herald = null;
    await page.waitForFunction(() => document.querySelector('[data-testid="state"]')?.textContent !== 'open',
      undefined, { timeout: UI_TIMEOUT });
    assert.equal(await stateText(), 'reconnecting', 'a restart (1012 or a dropped socket) must lead to reconnecting');
    herald = await startHerald();
    await waitForState('open', RECONNECT_TIMEOUT);
  });

  step('the next order after the restart appears and is printed', async () => {
    await publish({ user: USER, event: 'order', data: { id: 'A-1002', item: 'Dumplings', total: 8 } });
    const row = await printedRow('A-1002');
    assert.match(await row.textContent(), /Dumplings/);
    assert.equal(await page.locator('[data-testid="order"]').count(), 2);
  });

  step('screenshot saved to artifacts/demo.png and docs/demo.png', async () => {
    await page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: UI_TIMEOUT });
    mkdirSync(path.join(ROOT, 'docs'), { recursive: true });
    copyFileSync(SCREENSHOT, path.join(ROOT, 'docs', 'demo.png'));
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  });
});

// ---- helpers ----

async function startHerald() {
  // A short drain keeps the restart step quick; the flag's default is 20 s.
  const proc = spawnLogged(BIN, ['serve', '--listen', `127.0.0.1:${port}`], { log, env: { HERALD_DRAIN_TIMEOUT: '1s' } });
  await waitFor200(`${base}/readyz`, { proc, timeoutMs: READY_TIMEOUT, logFile: HERALD_LOG, name: 'herald' });
  return proc;
}

const stopHerald = (proc) => stopProcess(proc, STOP_TIMEOUT, 'herald');

async function publish(body) {
  return (await publishTo(base, body)).id;
}

async function printedRow(orderId) {
  await page.locator('[data-testid="order"]', { hasText: orderId }).waitFor({ timeout: UI_TIMEOUT });
  const row = page.locator('[data-testid="order"][data-printed="true"]', { hasText: orderId });
  await row.waitFor({ timeout: UI_TIMEOUT });
  return row;
}

const stateText = () => page.locator('[data-testid="state"]').textContent();

async function waitForState(state, timeout) {
  try {
    await page.waitForFunction((s) => document.querySelector('[data-testid="state"]')?.textContent === s,
      state, { timeout });
  } catch (err) {
    const logLines = await page.locator('[data-testid="log"]').innerText().catch(() => '?');
    throw new Error(`state is "${await stateText()}", not "${state}", after ${timeout} ms; page log:\n${logLines}`, { cause: err });
  }
}
