// End-to-end: the real herald binary, the demo page in headless Chromium, an order
// published over the HTTP API, the page's "printed" ack, and a server restart that the
// page must survive on its own. Run: node --test e2e/demo.e2e.mjs (see run.sh).
//
// HERALD_BIN: path to the binary (relative paths resolve from the repo root),
// default target/debug/herald. Standalone on loopback: no NATS, no token, no API key.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, copyFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = path.resolve(ROOT, process.env.HERALD_BIN || 'target/debug/herald');
const ARTIFACTS = path.join(ROOT, 'artifacts');
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
let broken = false; // steps depend on each other: after a failure, skip the rest quickly

// A sequential step that is skipped once an earlier one failed.
function step(name, fn) {
  it(name, async (t) => {
    if (broken) return t.skip('an earlier step failed');
    try { await fn(); } catch (err) { broken = true; throw err; }
  });
}

describe('demo console against a real herald', { timeout: 240_000 }, () => {
  before(async () => {
    assert.ok(existsSync(BIN), `herald binary not found at ${BIN}: build it first or set HERALD_BIN`);
    mkdirSync(ARTIFACTS, { recursive: true });
    log = createWriteStream(HERALD_LOG);
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    herald = await startHerald();
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: 30_000,
    });
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

async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port: p } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return p;
}

async function startHerald() {
  log.write(`\n=== start ${BIN} serve --listen 127.0.0.1:${port}\n`);
  const proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`], {
    // A short drain keeps the restart step quick; the flag's default is 20 s.
    env: { HERALD_DRAIN_TIMEOUT: '1s', ...process.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  proc.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + READY_TIMEOUT;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`herald exited before it was ready (code ${proc.exitCode}); see ${HERALD_LOG}`);
    }
    try {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return proc;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`GET /readyz was not 200 within ${READY_TIMEOUT} ms; see ${HERALD_LOG}`);
    }
    await delay(100); // poll interval
  }
}

async function stopHerald(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  const result = await Promise.race([proc.exited, delay(STOP_TIMEOUT).then(() => null)]);
  if (!result) {
    proc.kill('SIGKILL');
    await proc.exited;
    throw new Error(`herald did not exit within ${STOP_TIMEOUT} ms of SIGTERM`);
  }
}

async function publish(body) {
  const res = await fetch(`${base}/api/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  assert.equal(res.status, 202, `POST /api/v1/publish: ${res.status} ${text}`);
  const { id } = JSON.parse(text);
  assert.equal(typeof id, 'string', `publish reply carries an id: ${text}`);
  return id;
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
