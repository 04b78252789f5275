// End-to-end delivery receipts: herald standalone --durable and the demo page in headless
// Chromium. A service publishes an order with await {status: "printed"} over HTTP while
// the page is open: the call returns 200 with the demo's receipt. With the page closed the
// same kind of call returns 202 with receipt null at the timeout; when the page reopens
// the order is replayed, printed and acknowledged, and ?unacked=printed becomes empty.
// Run: node --test e2e/receipts.e2e.mjs (see run.sh).
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ARTIFACTS, HERALD_BIN, stepper, freePort, launchChromium, spawnLogged, stopProcess,
  waitFor200, until, logTail, waitForState, printedRow,
} from './harness.mjs';

const USER = 'merchant-receipts';
const HERALD_LOG = path.join(ARTIFACTS, 'herald-receipts-e2e.log');
const READY_TIMEOUT = 30_000;
const STOP_TIMEOUT = 30_000;
const UI_TIMEOUT = 15_000;
const PRESENCE_TIMEOUT = 15_000;
const AWAIT_MS = 10_000;      // the wait while the page is open: answered long before
const CLOSED_AWAIT_MS = 1_500; // the wait while it is closed: runs out

let herald;
let dataDir;
let base;
let browser;
let context;
let log;
const step = stepper();
let page;
let session;

describe('delivery receipts: a publish waits for the demo to print the order', { timeout: 180_000 }, () => {
  before(async () => {
    assert.ok(existsSync(HERALD_BIN), `herald binary not found at ${HERALD_BIN}: build it first or set HERALD_BIN`);
    mkdirSync(ARTIFACTS, { recursive: true });
    log = createWriteStream(HERALD_LOG);
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'herald-receipts-e2e-'));
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    herald = spawnLogged(HERALD_BIN, ['serve', '--durable', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`],
      { log, env: { HERALD_DRAIN_TIMEOUT: '1s' } });
    await waitFor200(`${base}/readyz`, { proc: herald, timeoutMs: READY_TIMEOUT, logFile: HERALD_LOG, name: 'herald --durable' });
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopProcess(herald, STOP_TIMEOUT, 'herald').catch(() => herald.kill('SIGKILL'));
    log?.end();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  step('the demo page is open', async () => {
    ({ page, session } = await openDemo());
    assert.equal(typeof session, 'string');
  });

  step('a publish with await printed returns 200 with the demo\'s receipt', async () => {
    const started = Date.now();
    const { status, reply } = await publishAwait(order('R-1'), AWAIT_MS);
    assert.equal(status, 200, `await answered with the receipt: ${JSON.stringify(reply)}`);
    assert.ok(Date.now() - started < AWAIT_MS, 'answered before the timeout');
    assert.equal(reply.receipt?.status, 'printed', JSON.stringify(reply));
    assert.equal(reply.receipt?.session, session, 'the receipt names the page\'s session');
    assert.equal(reply.receipt?.user, USER);
    assert.equal(reply.receipt?.id, reply.id);
    assert.equal(typeof reply.cursor, 'string', 'the message was kept');
    const row = await printedRow(page, 'R-1', UI_TIMEOUT);
    assert.match(await row.locator('[data-testid="receipts"]').innerText(), /printed/);
  });

  step('with the page closed the same call returns 202 with receipt null at the timeout', async () => {
    await page.close();
    await until(async () => (await presence()).online === false, PRESENCE_TIMEOUT,
      async () => `the closed page is still present: ${JSON.stringify(await presence())}`);
    const started = Date.now();
    const { status, reply } = await publishAwait(order('R-2'), CLOSED_AWAIT_MS);
    assert.equal(status, 202, JSON.stringify(reply));
    assert.equal(reply.receipt, null);
    assert.ok(Date.now() - started >= CLOSED_AWAIT_MS, 'waited the whole timeout');
    const unacked = await history('?unacked=printed');
    assert.deepEqual(unacked.messages.map((m) => m.data.id), ['R-2'], 'R-2 awaits printing');
  });

  step('the reopened page prints R-2, acks it, and nothing is left unacked', async () => {
    ({ page } = await openDemo());
    await printedRow(page, 'R-2', UI_TIMEOUT);
    const left = await until(async () => {
      const h = await history('?unacked=printed');
      return h.messages.length === 0 && h;
    }, UI_TIMEOUT, async () => `still unacked: ${JSON.stringify(await history('?unacked=printed'))}`);
    assert.equal(left.more, false);
    const all = await history('');
    const r2 = all.messages.find((m) => m.data.id === 'R-2');
    assert.ok(r2?.receipts.some((r) => r.status === 'printed'), `R-2 keeps its receipt: ${JSON.stringify(r2)}`);
  });
});

function order(id) {
  return { user: USER, event: 'order', data: { id, item: 'Noodles', total: 9.5 } };
}

async function publishAwait(body, timeoutMs) {
  const res = await fetch(`${base}/api/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, await: { status: 'printed', timeout_ms: timeoutMs } }),
    signal: AbortSignal.timeout(timeoutMs + 10_000),
  });
  const text = await res.text();
  return { status: res.status, reply: JSON.parse(text) };
}

async function history(query) {
  const res = await fetch(`${base}/api/v1/history/${USER}${query}`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  assert.equal(res.status, 200, `history${query}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function presence() {
  const res = await fetch(`${base}/api/v1/presence/${USER}`, { signal: AbortSignal.timeout(5000) });
  return JSON.parse(await res.text());
}

/** Opens the demo; resolves with the page and its session once the welcome arrived. */
async function openDemo() {
  const p = await context.newPage();
  p.setDefaultTimeout(UI_TIMEOUT);
  let welcome;
  p.on('websocket', (ws) => {
    ws.on('framereceived', ({ payload }) => {
      try {
        const f = JSON.parse(String(payload));
        if (f.type === 'welcome') welcome = f;
      } catch { /* not JSON */ }
    });
  });
  const res = await p.goto(`${base}/demo/?user=${USER}`, { timeout: UI_TIMEOUT });
  assert.equal(res.status(), 200);
  await waitForState(p, 'open', UI_TIMEOUT);
  await until(() => welcome, UI_TIMEOUT,
    async () => `no welcome within ${UI_TIMEOUT} ms; end of ${HERALD_LOG}:\n${await logTail(HERALD_LOG)}`);
  return { page: p, session: welcome.session };
}
