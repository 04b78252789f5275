// End-to-end recovery, once per store engine: NATS mode with --durable (JetStream), plain
// standalone herald as `cargo run` starts it (memory), and standalone --durable (disk, with
// a herald restart in the middle). The demo page in headless Chromium prints an order, is
// closed, three more orders are published while the user has no session, and a new page in
// the same browser context (same localStorage, so the client's stored cursor) must print
// exactly those three, in order, each once, and not the first again.
// Run: node --test e2e/durable.e2e.mjs (see run.sh).
//
// HERALD_BIN: the herald binary (default target/debug/herald). HERALD_TEST_NATS_SERVER: the
// nats-server binary (default /usr/sbin/nats-server, else nats-server on PATH).
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT, ARTIFACTS, HERALD_BIN, stepper, freePort, launchChromium, spawnLogged, stopProcess,
  waitFor200, waitForNats, natsServerBin, publish, until, logTail,
  waitForState, orderTitles, rowOf, printedRow,
} from './harness.mjs';

const USER = 'merchant-durable';
const CURSOR_KEY = `herald.cursor.${USER}`; // the client's default storage key



const NATS_TIMEOUT = 15_000;     // nats-server start to its INFO greeting
const READY_TIMEOUT = 30_000;    // herald start to /readyz 200 (connect, create the stream)
const STOP_TIMEOUT = 30_000;     // SIGTERM to exit
const UI_TIMEOUT = 15_000;       // a frame reaching the page and being rendered
const PRESENCE_TIMEOUT = 15_000; // a closed page's session to be gone from presence
const SETTLE_MS = 1_500;         // quiet time after the last expected frame: duplicates show up here

/** The engines, with what each starts and whether herald is restarted while the page is away. */
const ENGINES = [
  { name: 'jetstream', title: 'NATS mode --durable (JetStream)', nats: true, args: ['--durable'], restart: false },
  { name: 'memory', title: 'standalone, the default (memory)', nats: false, args: [], restart: false },
  { name: 'disk', title: 'standalone --durable (disk), across a herald restart', nats: false, disk: true, args: ['--durable'], restart: true },
];

for (const engine of ENGINES) scenario(engine);

function scenario(engine) {
  const HERALD_LOG = path.join(ARTIFACTS, `herald-durable-${engine.name}-e2e.log`);
  const NATS_LOG = path.join(ARTIFACTS, `nats-durable-${engine.name}-e2e.log`);
  const SCREENSHOT = path.join(ARTIFACTS, `durable-${engine.name}.png`);
  let nats;      // child processes
  let herald;
  let storeDir;  // JetStream store or herald's data dir, a fresh temporary directory
  let port;
  let base;
  let browser;
  let context;   // one browser context for every page: they share localStorage
  let logs = [];
  const pageErrors = [];
  const step = stepper();

  // What the scenario learns as it goes.
  const sent = {};     // order id -> publish reply {id, cursor?}
  let first;           // { page, sockets } of the first page
  let second;          // the page opened after the first was closed


  describe(`${engine.title}: a reopened demo page resumes from its stored cursor`, { timeout: 300_000 }, () => {
    before(async () => {
      assert.ok(existsSync(HERALD_BIN), `herald binary not found at ${HERALD_BIN}: build it first or set HERALD_BIN`);
      const natsBin = natsServerBin();
      assert.ok(!engine.nats || (natsBin && existsSync(natsBin)),
        'nats-server not found: set HERALD_TEST_NATS_SERVER, or install it at /usr/sbin/nats-server or on PATH');
      mkdirSync(ARTIFACTS, { recursive: true });
      const natsLog = createWriteStream(NATS_LOG);
      const heraldLog = createWriteStream(HERALD_LOG);
      logs = [natsLog, heraldLog];
      storeDir = mkdtempSync(path.join(os.tmpdir(), 'herald-durable-e2e-'));

      port = await freePort();
      base = `http://127.0.0.1:${port}`;
      const args = [...engine.args];
      if (engine.nats) {
        const natsPort = await freePort();
        nats = spawnLogged(natsBin, ['-js', '-sd', storeDir, '-p', String(natsPort), '-a', '127.0.0.1'], { log: natsLog });
        const info = await waitForNats(natsPort, { proc: nats, timeoutMs: NATS_TIMEOUT, logFile: NATS_LOG });
        assert.equal(info.jetstream, true, `nats-server ${info.version} at ${natsBin} did not enable JetStream`);
        args.push('--nats-url', `nats://127.0.0.1:${natsPort}`);
      }
      if (engine.disk) args.push('--data-dir', storeDir);
      await startHerald(args, heraldLog);

      browser = await launchChromium();
      context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
    });

    after(async () => {
      // Whatever happened above: no browser, herald or nats-server may outlive the test.
      await browser?.close().catch(() => {});
      await stopProcess(herald, STOP_TIMEOUT, 'herald').catch(() => herald.kill('SIGKILL'));
      if (nats) await stopProcess(nats, STOP_TIMEOUT, 'nats-server').catch(() => nats.kill('SIGKILL'));
      for (const log of logs) log.end();
      if (storeDir) rmSync(storeDir, { recursive: true, force: true });
    });

    step('the hub serves the demo and client files of this checkout', async () => {
      // herald.js is compiled into the binary: a binary built before the client learned to
      // store its cursor would fail below for a confusing reason.
      for (const [url, file] of [['/demo/herald.js', 'clients/js/herald.js'], ['/demo/demo.js', 'demo/demo.js']]) {
        const res = await fetch(`${base}${url}`, { signal: AbortSignal.timeout(5000) });
        assert.equal(res.status, 200, `GET ${url}`);
        const served = await res.text();
        assert.ok(served === await readFile(path.join(ROOT, file), 'utf8'),
          `${HERALD_BIN} serves a different ${url} than ${file}: rebuild it`);
      }
    });

    step('the first page connects without a cursor', async () => {
      first = await openDemo();
      const ws = first.sockets[0];
      assert.equal(new URL(ws.url).searchParams.has('since'), false, `nothing stored yet: ${ws.url}`);
      assert.equal(await storedCursor(first.page), null);
    });

    step('order A-1 is printed and its cursor is stored', async () => {
      sent['A-1'] = await publish(base, order('A-1', 'Noodles'));
      await printedRow(first.page, 'A-1', UI_TIMEOUT);
      // Frame events reach the test over their own path; give them a moment to catch up.
      const frame = await until(() => messageFrames(first.sockets[0]).find((m) => m.data?.id === 'A-1'),
        UI_TIMEOUT, 'the A-1 message frame was not seen on the WebSocket');
      assert.equal(typeof frame.cursor, 'string', `message frames carry a cursor: ${JSON.stringify(frame)}`);
      assert.ok(frame.cursor.length > 0, 'the cursor is not empty');
      assert.equal(frame.id, sent['A-1'].id, 'the frame carries the id of the 202 reply');
      assert.equal(sent['A-1'].cursor, frame.cursor, 'one cursor everywhere: the publish reply has the frame\'s');
      assert.equal(await rowOf(first.page, 'A-1').getAttribute('data-cursor'), frame.cursor);
      // The client stores the cursor right after the message handler (which printed the row)
      // returned, in the same task, so it is there as soon as the row is.
      assert.equal(await storedCursor(first.page), frame.cursor, `localStorage ${CURSOR_KEY}`);
    });

    step('the page is closed and A-2, A-3, A-4 are published while the user has no session', async () => {
      await first.page.close();
      // Wait until the hub knows: this is about messages kept while no session exists.
      await until(async () => {
        const p = await presence();
        return p.online === false || p.sessions === 0;
      }, PRESENCE_TIMEOUT, async () => `the closed page's session is still present: ${JSON.stringify(await presence())}`);
      // One after the other: publication order. The disk engine is restarted between A-3 and
      // A-4 (same port, so the page's origin and its stored cursor stay the same).
      for (const [id, item] of [['A-2', 'Dumplings'], ['A-3', 'Ramen'], ['A-4', 'Gyoza']]) {
        if (id === 'A-4' && engine.restart) await restartHerald();
        sent[id] = await publish(base, order(id, item));
      }
    });

    step('a new page in the same context resumes: A-2, A-3, A-4 printed once each, in order', async () => {
      second = await openDemo();
      const ws = second.sockets[0];
      for (const id of ['A-2', 'A-3', 'A-4']) await printedRow(second.page, id, UI_TIMEOUT);
      await delay(SETTLE_MS); // a duplicate or a stray A-1 would arrive by now

      const a1Cursor = messageFrames(first.sockets[0]).find((m) => m.data?.id === 'A-1').cursor;
      assert.equal(new URL(ws.url).searchParams.get('since'), a1Cursor, `resumes after A-1: ${ws.url}`);
      const welcome = ws.received[0];
      assert.equal(welcome?.type, 'welcome', `the welcome comes first: ${JSON.stringify(ws.received.slice(0, 2))}`);
      assert.equal(welcome.recovered, true, `welcome: ${JSON.stringify(welcome)}`);
      assert.equal(welcome.replayed, 3, `welcome: ${JSON.stringify(welcome)}`);

      const frames = messageFrames(ws);
      assert.deepEqual(frames.map((m) => m.data?.id), ['A-2', 'A-3', 'A-4'], 'replayed once each, in publication order');
      assert.deepEqual(frames.map((m) => m.id), ['A-2', 'A-3', 'A-4'].map((id) => sent[id].id));
      assert.equal(new Set(frames.map((m) => m.cursor)).size, 3, 'each message has its own cursor');
      assert.ok(!frames.some((m) => m.cursor === a1Cursor), 'A-1 is not replayed');

      // Printed: one row each (newest first) and one "printed" ack each, in arrival order.
      assert.deepEqual(await orderTitles(second.page), ['#A-4', '#A-3', '#A-2']);
      assert.deepEqual(printedAcks(ws), ['A-2', 'A-3', 'A-4'].map((id) => sent[id].id));
      assert.equal(await storedCursor(second.page), frames.at(-1).cursor, 'the stored cursor moved to A-4');
      assert.match(await second.page.locator('[data-testid="log"]').innerText(), /resumed: 3 missed/);
      await second.page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: UI_TIMEOUT });
    });

    step('a live order after the replay is printed once, after the replayed ones', async () => {
      sent['A-5'] = await publish(base, order('A-5', 'Edamame'));
      await printedRow(second.page, 'A-5', UI_TIMEOUT);
      await delay(SETTLE_MS);
      const ws = second.sockets[0];
      assert.deepEqual(messageFrames(ws).map((m) => m.data?.id), ['A-2', 'A-3', 'A-4', 'A-5']);
      assert.deepEqual(await orderTitles(second.page), ['#A-5', '#A-4', '#A-3', '#A-2']);
      assert.deepEqual(printedAcks(ws), ['A-2', 'A-3', 'A-4', 'A-5'].map((id) => sent[id].id));
    });

    step('a reload resumes after A-5 and replays nothing', async () => {
      const a5Cursor = messageFrames(second.sockets[0]).at(-1).cursor;
      await second.page.reload({ timeout: UI_TIMEOUT });
      await waitForState(second.page, 'open', UI_TIMEOUT);
      const ws = await until(() => second.sockets[1]?.received.some((f) => f.type === 'welcome') && second.sockets[1],
        UI_TIMEOUT, 'no welcome on the reloaded page');
      assert.equal(new URL(ws.url).searchParams.get('since'), a5Cursor, `resumes after A-5: ${ws.url}`);
      const welcome = ws.received.find((f) => f.type === 'welcome');
      assert.equal(welcome.recovered, true, `welcome: ${JSON.stringify(welcome)}`);
      assert.equal(welcome.replayed, 0, `welcome: ${JSON.stringify(welcome)}`);
      await delay(SETTLE_MS);
      assert.deepEqual(messageFrames(ws), []);
      assert.equal(await second.page.locator('[data-testid="order"]').count(), 0, 'nothing printed again');
      assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
    });
  });

  /** Starts herald with `args` on `port` and waits until it is ready. */
  async function startHerald(args, log) {
    herald = spawnLogged(HERALD_BIN, ['serve', ...args, '--listen', `127.0.0.1:${port}`],
      { log, env: { HERALD_DRAIN_TIMEOUT: '1s' } });
    herald.args = args;
    herald.log = log;
    await waitFor200(`${base}/readyz`, { proc: herald, timeoutMs: READY_TIMEOUT, logFile: HERALD_LOG, name: `herald ${args.join(' ')}` });
  }

  async function restartHerald() {
    const { args, log } = herald;
    await stopProcess(herald, STOP_TIMEOUT, 'herald');
    await startHerald(args, log);
  }

  // ---- helpers ----

  function order(id, item) {
    return { user: USER, event: 'order', data: { id, item, total: 9.5 } };
  }

  /** Opens the demo for USER in the shared context; resolves once the welcome arrived. */
  async function openDemo() {
    const page = await context.newPage();
    page.setDefaultTimeout(UI_TIMEOUT);
    page.on('pageerror', (err) => pageErrors.push(err.message));
    const sockets = watchSockets(page);
    const res = await page.goto(`${base}/demo/?user=${USER}`, { timeout: UI_TIMEOUT });
    assert.equal(res.status(), 200, 'GET /demo/ must serve the demo page');
    await waitForState(page, 'open', UI_TIMEOUT);
    // A message published after the welcome is delivered; before it, it may not be.
    await until(() => sockets[0]?.received.some((f) => f.type === 'welcome'), UI_TIMEOUT,
      async () => `no welcome frame within ${UI_TIMEOUT} ms; end of ${HERALD_LOG}:\n${await logTail(HERALD_LOG)}`);
    return { page, sockets };
  }

  /** Records every hub WebSocket of the page (one per page load) with its frames, parsed. */
  function watchSockets(page) {
    const sockets = [];
    const parse = (payload) => { try { return JSON.parse(String(payload)); } catch { return { raw: String(payload) }; } };
    page.on('websocket', (ws) => {
      if (!new URL(ws.url()).pathname.startsWith('/websocket/')) return;
      const s = { url: ws.url(), received: [], sent: [] };
      sockets.push(s);
      ws.on('framereceived', ({ payload }) => s.received.push(parse(payload)));
      ws.on('framesent', ({ payload }) => s.sent.push(parse(payload)));
    });
    return sockets;
  }

  const messageFrames = (ws) => ws.received.filter((f) => f.type === 'message');

  /** Message ids the page acknowledged as printed on this socket, in order. */
  const printedAcks = (ws) => ws.sent.filter((f) => f.type === 'publish' && f.event === 'printed').map((f) => f.data?.id);

  const storedCursor = (page) => page.evaluate((key) => localStorage.getItem(key), CURSOR_KEY);

  async function presence() {
    const res = await fetch(`${base}/api/v1/presence/${USER}`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    assert.equal(res.status, 200, `GET /api/v1/presence/${USER}: ${res.status} ${text}`);
    return JSON.parse(text);
  }
}
