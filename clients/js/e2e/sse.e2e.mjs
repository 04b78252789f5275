// End-to-end, the Server-Sent Events fallback: the demo page in headless Chromium with
// `window.WebSocket` removed before any script runs, so the client must use SSE by itself
// (an EventSource on /sse/{user}, frames POSTed to /sse/{user}/{session}). Two scenarios:
//
// - standalone herald: an order is printed (its ack POSTed), a broadcast shown, and the
//   page reconnects by itself across a herald restart;
// - herald --durable on a JetStream nats-server: an order is printed; herald restarts and
//   the page is kept from reconnecting meanwhile (its /sse/ requests are aborted) while
//   three more orders are published; let through, the page resumes with since= the first
//   order's cursor and prints exactly those three, in order, once each; then a live one,
//   and a reload that replays nothing.
//
// Run: node --test e2e/sse.e2e.mjs (see run.sh). HERALD_BIN: the herald binary (default
// target/debug/herald), which must embed this checkout's herald.js (it is compiled in).
// HERALD_TEST_NATS_SERVER: nats-server (default /usr/sbin/nats-server, else PATH).
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT, ARTIFACTS, HERALD_BIN, stepper, freePort, launchChromium, spawnLogged, stopProcess,
  waitFor200, waitForNats, natsServerBin, publish, until,
  stateText, waitForState, orderTitles, printedRow,
} from './harness.mjs';

const NATS_TIMEOUT = 15_000;      // nats-server start to its INFO greeting
const READY_TIMEOUT = 30_000;     // herald start to /readyz 200
const STOP_TIMEOUT = 30_000;      // SIGTERM to exit (drain window shortened to 1 s)
const UI_TIMEOUT = 15_000;        // a frame reaching the page and being rendered
const RECONNECT_TIMEOUT = 60_000; // backoff may have climbed a few steps while blocked
const PRESENCE_TIMEOUT = 15_000;  // a session to be gone from presence
const SETTLE_MS = 1_500;          // quiet time after the last expected frame: duplicates show up here

// Server frame types: the SSE event names the recorder below listens to.
const EVENT_TYPES = ['welcome', 'message', 'pong', 'error', 'subscribed', 'refreshed', 'close'];

/**
 * Runs in the page before its scripts: no WebSocket at all, and every EventSource records
 * the events it receives (window.__sse: [{url, events: [{type, data, id}]}], one entry per
 * stream, in order), since Playwright shows WebSocket frames but not SSE events.
 */
function withoutWebSocket(eventTypes) {
  delete window.WebSocket;
  if ('WebSocket' in window) window.WebSocket = undefined;
  const Native = window.EventSource;
  const streams = [];
  window.__sse = streams;
  window.EventSource = class RecordingEventSource extends Native {
    constructor(url, init) {
      super(url, init);
      const s = { url: new URL(url, location.href).href, events: [] };
      streams.push(s);
      for (const type of eventTypes) {
        // The EventSource's own failures are "error" events too, without data: not frames.
        this.addEventListener(type, (ev) => {
          if (typeof ev.data === 'string') s.events.push({ type, data: ev.data, id: ev.lastEventId });
        });
      }
    }
  };
}

/** Watches a page: the SSE POSTs it makes (parsed bodies) and any WebSocket it opens. */
function watch(page, pageErrors) {
  const w = { posts: [], websockets: [] };
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('websocket', (ws) => w.websockets.push(ws.url()));
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (req.method() !== 'POST' || !url.pathname.startsWith('/sse/')) return;
    let body;
    try { body = JSON.parse(req.postData() ?? ''); } catch { body = { raw: req.postData() }; }
    w.posts.push({ path: url.pathname, body });
  });
  return w;
}

/** The page's streams so far, frames parsed: [{url, since, events: [{type, id, frame}]}]. */
async function streams(page) {
  const raw = await page.evaluate(() => window.__sse.map((s) => ({ url: s.url, events: [...s.events] })));
  return raw.map((s) => ({
    url: s.url,
    since: new URL(s.url).searchParams.get('since'),
    events: s.events.map((e) => {
      let frame;
      try { frame = JSON.parse(e.data); } catch { frame = { raw: e.data }; }
      return { type: e.type, id: e.id, frame };
    }),
  }));
}

const messages = (stream) => stream.events.filter((e) => e.type === 'message').map((e) => e.frame);
const allMessages = (list) => list.flatMap(messages);

/** Order ids the page acknowledged ("printed", POSTed), in order. */
const printedAcks = (w) => w.posts.filter((p) => p.body?.type === 'publish' && p.body.event === 'printed')
  .map((p) => p.body.data?.id);

/** Waits for a welcome on the page's latest stream (state "open" comes with it). */
async function welcomed(page, count = 1) {
  return until(async () => {
    const list = await streams(page);
    const s = list[count - 1];
    const welcome = s?.events.find((e) => e.type === 'welcome');
    return welcome && { stream: s, welcome: welcome.frame, all: list };
  }, UI_TIMEOUT, `no welcome on SSE stream #${count}`);
}

function order(user, id, item) {
  return { user, event: 'order', data: { id, item, total: 9.5 } };
}

describe('SSE fallback: the demo without WebSocket against a standalone herald', { timeout: 240_000 }, () => {
  const USER = 'merchant-sse';
  const HERALD_LOG = path.join(ARTIFACTS, 'herald-sse-e2e.log');
  const step = stepper();
  const pageErrors = [];
  let port;
  let base;
  let herald;
  let browser;
  let page;
  let watched;
  let log;

  const startHerald = async () => {
    const proc = spawnLogged(HERALD_BIN, ['serve', '--listen', `127.0.0.1:${port}`], { log, env: { HERALD_DRAIN_TIMEOUT: '1s' } });
    await waitFor200(`${base}/readyz`, { proc, timeoutMs: READY_TIMEOUT, logFile: HERALD_LOG, name: 'herald' });
    return proc;
  };

  before(async () => {
    assert.ok(existsSync(HERALD_BIN), `herald binary not found at ${HERALD_BIN}: build it first or set HERALD_BIN`);
    mkdirSync(ARTIFACTS, { recursive: true });
    log = createWriteStream(HERALD_LOG);
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    herald = await startHerald();
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
    page.setDefaultTimeout(UI_TIMEOUT);
    await page.addInitScript(withoutWebSocket, EVENT_TYPES);
    watched = watch(page, pageErrors);
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopProcess(herald, STOP_TIMEOUT, 'herald').catch(() => herald.kill('SIGKILL'));
    log?.end();
  });

  step('the hub serves the demo and client files of this checkout', async () => {
    // herald.js is compiled into the binary: one built before the SSE fallback would fail
    // below for a confusing reason.
    for (const [url, file] of [['/demo/herald.js', 'clients/js/herald.js'], ['/demo/demo.js', 'demo/demo.js']]) {
      const res = await fetch(`${base}${url}`, { signal: AbortSignal.timeout(5000) });
      assert.equal(res.status, 200, `GET ${url}`);
      assert.ok(await res.text() === await readFile(path.join(ROOT, file), 'utf8'),
        `${HERALD_BIN} serves a different ${url} than ${file}: rebuild it`);
    }
  });

  step('without WebSocket the page connects over SSE and the badge says open', async () => {
    const res = await page.goto(`${base}/demo/?user=${USER}`, { timeout: UI_TIMEOUT });
    assert.equal(res.status(), 200, 'GET /demo/ must serve the demo page');
    assert.equal(await page.evaluate(() => typeof window.WebSocket), 'undefined', 'the init script removed WebSocket');
    await waitForState(page, 'open', UI_TIMEOUT);
    const { stream, welcome } = await welcomed(page);
    assert.equal(new URL(stream.url).pathname, `/sse/${USER}`);
    assert.equal(stream.events[0]?.type, 'welcome', `the welcome comes first: ${JSON.stringify(stream.events.slice(0, 2))}`);
    assert.equal(typeof welcome.session, 'string');
    assert.deepEqual(watched.websockets, [], 'no WebSocket was opened');
  });

  step('a published order appears, is printed, and its ack is POSTed to the session', async () => {
    const reply = await publish(base, order(USER, 'A-1001', 'Noodles'));
    const row = await printedRow(page, 'A-1001', UI_TIMEOUT);
    assert.equal(await row.getAttribute('data-id'), reply.id, 'row carries the message id from the 202 reply');
    const { welcome, stream } = await welcomed(page);
    const frame = messages(stream).find((m) => m.data?.id === 'A-1001');
    assert.ok(frame, 'the message came as an SSE "message" event');
    await until(() => printedAcks(watched).includes(reply.id), UI_TIMEOUT, 'the "printed" ack was not POSTed');
    const ack = watched.posts.find((p) => p.body?.event === 'printed');
    assert.equal(ack.path, `/sse/${USER}/${welcome.session}`, 'POSTed to the session of the welcome');
    assert.deepEqual(ack.body, { type: 'publish', event: 'printed', data: { id: reply.id } });
  });

  step('a broadcast shows in the banner', async () => {
    await publish(base, { broadcast: true, event: 'notice', data: { text: 'Kitchen closes at 22:00' } });
    await page.locator('[data-testid="banner"]', { hasText: 'Kitchen closes at 22:00' })
      .waitFor({ state: 'visible', timeout: UI_TIMEOUT });
  });

  step('after herald restarts on the same port the page reconnects by itself, over SSE again', async () => {
    await stopProcess(herald, STOP_TIMEOUT, 'herald');
    herald = null;
    await page.waitForFunction(() => document.querySelector('[data-testid="state"]')?.textContent !== 'open',
      undefined, { timeout: UI_TIMEOUT });
    assert.equal(await stateText(page), 'reconnecting', 'a restart (close event 1012 or a dropped stream) must lead to reconnecting');
    herald = await startHerald();
    await waitForState(page, 'open', RECONNECT_TIMEOUT);
    const list = await streams(page);
    const last = list.at(-1);
    assert.ok(list.length >= 2, 'a new stream');
    assert.ok(last.events.some((e) => e.type === 'welcome'), 'the new stream was welcomed');
    const first = list[0];
    const closeEvent = first.events.find((e) => e.type === 'close');
    if (closeEvent) assert.equal(closeEvent.frame.code, 1012, `the drain closes with 1012: ${JSON.stringify(closeEvent.frame)}`);
    const a1 = messages(first).find((m) => m.data?.id === 'A-1001');
    if (a1.cursor) assert.equal(last.since, a1.cursor, `reconnects with since= the last cursor: ${last.url}`);
    assert.deepEqual(watched.websockets, []);
  });

  step('the next order after the restart appears and is printed', async () => {
    await publish(base, order(USER, 'A-1002', 'Dumplings'));
    await printedRow(page, 'A-1002', UI_TIMEOUT);
    assert.equal(await page.locator('[data-testid="order"]').count(), 2);
    await page.screenshot({ path: path.join(ARTIFACTS, 'sse.png'), fullPage: true, timeout: UI_TIMEOUT });
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  });
});

describe('SSE fallback, durable: orders sent while the stream was down are printed once each', { timeout: 300_000 }, () => {
  const USER = 'merchant-sse-durable';
  const CURSOR_KEY = `herald.cursor.${USER}`; // the client's default storage key
  const HERALD_LOG = path.join(ARTIFACTS, 'herald-sse-durable-e2e.log');
  const NATS_LOG = path.join(ARTIFACTS, 'nats-sse-durable-e2e.log');
  const step = stepper();
  const pageErrors = [];
  const sent = {}; // order id -> publish reply {id, cursor}
  let nats;
  let herald;
  let natsPort;
  let port;
  let base;
  let storeDir;
  let heraldLog;
  let logs = [];
  let browser;
  let page;
  let watched;
  let a1Cursor;
  const blockSse = (url) => url.pathname.startsWith('/sse/'); // a route matcher: every /sse/ request

  const startHerald = async () => {
    const proc = spawnLogged(HERALD_BIN, ['serve', '--durable', '--nats-url', `nats://127.0.0.1:${natsPort}`,
      '--listen', `127.0.0.1:${port}`], { log: heraldLog, env: { HERALD_DRAIN_TIMEOUT: '1s' } });
    await waitFor200(`${base}/readyz`, { proc, timeoutMs: READY_TIMEOUT, logFile: HERALD_LOG, name: 'herald --durable' });
    return proc;
  };

  const presence = async () => {
    const res = await fetch(`${base}/api/v1/presence/${USER}`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    assert.equal(res.status, 200, `GET /api/v1/presence/${USER}: ${res.status} ${text}`);
    return JSON.parse(text);
  };

  const storedCursor = () => page.evaluate((key) => localStorage.getItem(key), CURSOR_KEY);

  before(async () => {
    assert.ok(existsSync(HERALD_BIN), `herald binary not found at ${HERALD_BIN}: build it first or set HERALD_BIN`);
    const natsBin = natsServerBin();
    assert.ok(natsBin && existsSync(natsBin),
      'nats-server not found: set HERALD_TEST_NATS_SERVER, or install it at /usr/sbin/nats-server or on PATH');
    mkdirSync(ARTIFACTS, { recursive: true });
    const natsLog = createWriteStream(NATS_LOG);
    heraldLog = createWriteStream(HERALD_LOG);
    logs = [natsLog, heraldLog];
    storeDir = mkdtempSync(path.join(os.tmpdir(), 'herald-sse-e2e-'));
    natsPort = await freePort();
    nats = spawnLogged(natsBin, ['-js', '-sd', storeDir, '-p', String(natsPort), '-a', '127.0.0.1'], { log: natsLog });
    const info = await waitForNats(natsPort, { proc: nats, timeoutMs: NATS_TIMEOUT, logFile: NATS_LOG });
    assert.equal(info.jetstream, true, `nats-server ${info.version} at ${natsBin} did not enable JetStream`);
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    herald = await startHerald();
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
    page.setDefaultTimeout(UI_TIMEOUT);
    await page.addInitScript(withoutWebSocket, EVENT_TYPES);
    watched = watch(page, pageErrors);
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopProcess(herald, STOP_TIMEOUT, 'herald').catch(() => herald.kill('SIGKILL'));
    await stopProcess(nats, STOP_TIMEOUT, 'nats-server').catch(() => nats.kill('SIGKILL'));
    for (const log of logs) log.end();
    if (storeDir) rmSync(storeDir, { recursive: true, force: true });
  });

  step('the page connects over SSE without a cursor', async () => {
    const res = await page.goto(`${base}/demo/?user=${USER}`, { timeout: UI_TIMEOUT });
    assert.equal(res.status(), 200, 'GET /demo/ must serve the demo page');
    await waitForState(page, 'open', UI_TIMEOUT);
    const { stream } = await welcomed(page);
    assert.equal(stream.since, null, `nothing stored yet: ${stream.url}`);
    assert.equal(await storedCursor(), null);
    assert.deepEqual(watched.websockets, []);
  });

  step('order A-1 is printed; its cursor is the event id, and is stored', async () => {
    sent['A-1'] = await publish(base, order(USER, 'A-1', 'Noodles'));
    await printedRow(page, 'A-1', UI_TIMEOUT);
    const { stream } = await welcomed(page);
    const event = stream.events.find((e) => e.type === 'message' && e.frame.data?.id === 'A-1');
    assert.ok(event, 'the A-1 message event was seen on the stream');
    a1Cursor = event.frame.cursor;
    assert.equal(typeof a1Cursor, 'string', `message frames carry a cursor: ${JSON.stringify(event.frame)}`);
    assert.ok(a1Cursor.length > 0);
    assert.equal(event.id, a1Cursor, 'the SSE id of a message event is its cursor');
    assert.equal(event.frame.id, sent['A-1'].id);
    assert.equal(sent['A-1'].cursor, a1Cursor, 'one cursor everywhere: the publish reply has the frame\'s');
    assert.equal(await storedCursor(), a1Cursor, `localStorage ${CURSOR_KEY}`);
  });

  step('herald restarts while the page cannot reach it; A-2, A-3, A-4 are published meanwhile', async () => {
    // Every new /sse/ request of the page fails from now on (the open stream is not affected).
    await page.route(blockSse, (route) => route.abort());
    await stopProcess(herald, STOP_TIMEOUT, 'herald');
    herald = null;
    await page.waitForFunction(() => document.querySelector('[data-testid="state"]')?.textContent !== 'open',
      undefined, { timeout: UI_TIMEOUT });
    assert.equal(await stateText(page), 'reconnecting');
    herald = await startHerald();
    await until(async () => {
      const p = await presence();
      return p.online === false || p.sessions === 0;
    }, PRESENCE_TIMEOUT, async () => `the user still has a session: ${JSON.stringify(await presence())}`);
    for (const [id, item] of [['A-2', 'Dumplings'], ['A-3', 'Ramen'], ['A-4', 'Gyoza']]) {
      sent[id] = await publish(base, order(USER, id, item)); // one after the other: publication order
    }
    await delay(500);
    assert.equal(await stateText(page), 'reconnecting', 'still kept away from the hub');
  });

  step('let through, the page resumes after A-1: A-2, A-3, A-4 printed once each, in order', async () => {
    const before = (await streams(page)).length;
    await page.unroute(blockSse);
    await waitForState(page, 'open', RECONNECT_TIMEOUT);
    const list = await until(async () => {
      const l = await streams(page);
      return l.length > before && l.at(-1).events.some((e) => e.type === 'welcome') && l;
    }, UI_TIMEOUT, 'no welcomed stream after the block was lifted');
    const resumed = list.at(-1);
    assert.equal(resumed.since, a1Cursor, `resumes after A-1: ${resumed.url}`);
    for (const id of ['A-2', 'A-3', 'A-4']) await printedRow(page, id, UI_TIMEOUT);
    await delay(SETTLE_MS); // a duplicate or a stray A-1 would arrive by now

    const latest = await streams(page);
    const stream = latest.at(-1);
    const welcome = stream.events[0];
    assert.equal(welcome?.type, 'welcome', `the welcome comes first: ${JSON.stringify(stream.events.slice(0, 2))}`);
    assert.equal(welcome.frame.recovered, true, `welcome: ${JSON.stringify(welcome.frame)}`);
    assert.equal(welcome.frame.replayed, 3, `welcome: ${JSON.stringify(welcome.frame)}`);
    const replayed = messages(stream);
    assert.deepEqual(replayed.map((m) => m.data?.id), ['A-2', 'A-3', 'A-4'], 'replayed once each, in publication order');
    assert.deepEqual(replayed.map((m) => m.id), ['A-2', 'A-3', 'A-4'].map((id) => sent[id].id));
    // Once each over the page's whole life: every stream it opened, the failed ones included.
    assert.deepEqual(allMessages(latest).map((m) => m.data?.id), ['A-1', 'A-2', 'A-3', 'A-4']);
    assert.deepEqual(await orderTitles(page), ['#A-4', '#A-3', '#A-2', '#A-1']);
    await until(() => printedAcks(watched).length >= 4, UI_TIMEOUT, 'not every order was acknowledged');
    assert.deepEqual(printedAcks(watched), ['A-1', 'A-2', 'A-3', 'A-4'].map((id) => sent[id].id), 'one ack each, in order');
    assert.equal(await storedCursor(), replayed.at(-1).cursor, 'the stored cursor moved to A-4');
    assert.match(await page.locator('[data-testid="log"]').innerText(), /resumed: 3 missed/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'sse-durable.png'), fullPage: true, timeout: UI_TIMEOUT });
  });

  step('a live order after the replay is printed once', async () => {
    sent['A-5'] = await publish(base, order(USER, 'A-5', 'Edamame'));
    await printedRow(page, 'A-5', UI_TIMEOUT);
    await delay(SETTLE_MS);
    assert.deepEqual(allMessages(await streams(page)).map((m) => m.data?.id), ['A-1', 'A-2', 'A-3', 'A-4', 'A-5']);
    assert.deepEqual(await orderTitles(page), ['#A-5', '#A-4', '#A-3', '#A-2', '#A-1']);
    await until(() => printedAcks(watched).length >= 5, UI_TIMEOUT, 'A-5 was not acknowledged');
    assert.deepEqual(printedAcks(watched), ['A-1', 'A-2', 'A-3', 'A-4', 'A-5'].map((id) => sent[id].id));
  });

  step('a reload resumes from the stored cursor (after A-5) and replays nothing', async () => {
    const a5Cursor = await storedCursor();
    assert.equal(a5Cursor, sent['A-5'].cursor);
    await page.reload({ timeout: UI_TIMEOUT });
    await waitForState(page, 'open', UI_TIMEOUT);
    const { stream, welcome } = await welcomed(page); // a new document: its first stream
    assert.equal(stream.since, a5Cursor, `resumes after A-5: ${stream.url}`);
    assert.equal(welcome.recovered, true, `welcome: ${JSON.stringify(welcome)}`);
    assert.equal(welcome.replayed, 0, `welcome: ${JSON.stringify(welcome)}`);
    await delay(SETTLE_MS);
    assert.deepEqual(allMessages(await streams(page)), []);
    assert.equal(await page.locator('[data-testid="order"]').count(), 0, 'nothing printed again');
    assert.deepEqual(watched.websockets, [], 'no WebSocket at any time');
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  });
});
