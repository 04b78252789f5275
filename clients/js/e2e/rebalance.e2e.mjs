// End-to-end rebalancing (PROTOCOL.md §4): the demo console in headless Chromium, served
// and connected through HAProxy (Debian's package, `balance roundrobin`) in front of a pod
// in NATS mode with --durable. The pod holds the page and 150 other sessions; a second pod
// starts, the first sheds with 1012 (reason `rebalance`), the page reconnects by itself
// through the balancer, and an order published right after the shed is printed exactly once.
// Run: node --test e2e/rebalance.e2e.mjs (see run.sh).
//
// HERALD_BIN: the herald binary (default target/debug/herald). HERALD_TEST_NATS_SERVER: the
// nats-server binary (default /usr/sbin/nats-server, else nats-server on PATH). HAPROXY: the
// haproxy binary (default /usr/sbin/haproxy).
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  ARTIFACTS, HERALD_BIN, stepper, freePort, launchChromium, spawnLogged, stopProcess,
  waitFor200, waitForNats, natsServerBin, publish, until,
  waitForState, orderTitles, printedRow,
} from './harness.mjs';

const HAPROXY = process.env.HAPROXY || '/usr/sbin/haproxy';
const USER = 'merchant-rebalance';
const FILLERS = 150;             // other sessions on the first pod: it sheds only above 100
const NATS_TIMEOUT = 15_000;
const READY_TIMEOUT = 30_000;
const STOP_TIMEOUT = 30_000;
const UI_TIMEOUT = 15_000;
const SHED_TIMEOUT = 45_000;     // second pod ready, settled (3 s), then shedding 50 %/s
const SETTLE_MS = 1_500;         // quiet time after the last expected frame: duplicates show up here

const LOG = path.join(ARTIFACTS, 'herald-rebalance-e2e.log');
const SCREENSHOT = path.join(ARTIFACTS, 'rebalance.png');

const step = stepper();
let log;
let storeDir;
let nats;
let natsUrl;
const pods = [];       // { name, port, proc }
let haproxy;
let lbPort;
let lb;                // http://127.0.0.1:<lbPort>
let browser;
let page;
let sockets;           // the page's hub WebSockets, with their frames and close
const fillers = { sockets: new Set(), stopping: false };
const pageErrors = [];

describe('demo console behind HAProxy: shed by rebalancing, back by itself, nothing lost or repeated', { timeout: 240_000 }, () => {
  before(async () => {
    assert.ok(existsSync(HERALD_BIN), `herald binary not found at ${HERALD_BIN}: build it first or set HERALD_BIN`);
    assert.ok(existsSync(HAPROXY), `haproxy not found at ${HAPROXY}: scripts/test.sh installs Debian's haproxy`);
    const natsBin = natsServerBin();
    assert.ok(natsBin && existsSync(natsBin), 'nats-server not found: set HERALD_TEST_NATS_SERVER');
    mkdirSync(ARTIFACTS, { recursive: true });
    log = createWriteStream(LOG);
    storeDir = mkdtempSync(path.join(os.tmpdir(), 'herald-rebalance-e2e-'));
    const natsPort = await freePort();
    nats = spawnLogged(natsBin, ['-js', '-sd', storeDir, '-p', String(natsPort), '-a', '127.0.0.1'], { log });
    const info = await waitForNats(natsPort, { proc: nats, timeoutMs: NATS_TIMEOUT, logFile: LOG });
    assert.equal(info.jetstream, true, `nats-server ${info.version} did not enable JetStream`);
    natsUrl = `nats://127.0.0.1:${natsPort}`;
    pods.push({ name: 'pod-a', port: await freePort() }, { name: 'pod-b', port: await freePort() });
    lbPort = await freePort();
    lb = `http://127.0.0.1:${lbPort}`;
    browser = await launchChromium();
  });

  after(async () => {
    fillers.stopping = true;
    for (const s of fillers.sockets) s.destroy();
    await browser?.close().catch(() => {});
    if (haproxy) await stopProcess(haproxy, STOP_TIMEOUT, 'haproxy').catch(() => haproxy.kill('SIGKILL'));
    for (const p of pods) if (p.proc) await stopProcess(p.proc, STOP_TIMEOUT, p.name).catch(() => p.proc.kill('SIGKILL'));
    if (nats) await stopProcess(nats, STOP_TIMEOUT, 'nats-server').catch(() => nats.kill('SIGKILL'));
    log?.end();
    if (storeDir) rmSync(storeDir, { recursive: true, force: true });
  });

  step('HAProxy in front of two pod addresses, only the first pod running', async () => {
    await startPod(pods[0]);
    const conf = path.join(storeDir, 'haproxy.cfg');
    writeFileSync(conf, [
      'defaults', '  mode http', '  timeout connect 5s', '  timeout client 1h', '  timeout server 1h', '  timeout tunnel 1h',
      'frontend fe', `  bind 127.0.0.1:${lbPort}`, '  default_backend pods',
      'backend pods', '  balance roundrobin', '  option httpchk GET /readyz',
      ...pods.map((p) => `  server ${p.name} 127.0.0.1:${p.port} check inter 300ms fall 2 rise 2`), '',
    ].join('\n'));
    haproxy = spawnLogged(HAPROXY, ['-f', conf, '-db'], { log });
    // The balancer has marked the second address down once several answers in a row are 200.
    await until(async () => {
      for (let i = 0; i < 6; i++) {
        const ok = await fetch(`${lb}/readyz`, { signal: AbortSignal.timeout(1000) }).then((r) => r.status === 200, () => false);
        if (!ok) return false;
      }
      return true;
    }, READY_TIMEOUT, 'HAProxy never answered /readyz through the first pod');
  });

  step('the page, served and connected through HAProxy, is on the first pod and prints R-1', async () => {
    page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
    page.setDefaultTimeout(UI_TIMEOUT);
    page.on('pageerror', (err) => pageErrors.push(err.message));
    sockets = watchSockets(page);
    const res = await page.goto(`${lb}/demo/?user=${USER}`, { timeout: UI_TIMEOUT });
    assert.equal(res.status(), 200, 'GET /demo/ through HAProxy');
    await waitForState(page, 'open', UI_TIMEOUT);
    const welcome = await until(() => sockets[0]?.received.find((f) => f.type === 'welcome'), UI_TIMEOUT, 'no welcome');
    assert.equal(welcome.pod, 'pod-a', `welcome: ${JSON.stringify(welcome)}`);
    await publish(podUrl(pods[0]), order('R-1', 'Noodles'));
    await printedRow(page, 'R-1', UI_TIMEOUT);
  });

  step(`${FILLERS} more sessions on the first pod, then a second pod starts`, async () => {
    for (let i = 0; i < FILLERS; i++) filler(pods[0].port, `filler-${i}`);
    await until(async () => (await metric(pods[0], 'herald_connections')) >= FILLERS + 1, UI_TIMEOUT,
      async () => `the first pod holds ${await metric(pods[0], 'herald_connections')} sessions`);
    await startPod(pods[1]);
  });

  step('the first pod sheds the page with 1012 rebalance; R-2 is published right after', async () => {
    await until(() => sockets[0].closed, SHED_TIMEOUT, async () =>
      `the page was not shed; the first pod shed ${await metric(pods[0], 'herald_rebalance_shed_total')}`);
    await publish(podUrl(pods[1]), order('R-2', 'Dumplings'));
    assert.ok((await metric(pods[0], 'herald_rebalance_shed_total')) > 0, 'the first pod counts what it shed');
    await until(async () => /code 1012: rebalance/.test(await page.locator('[data-testid="log"]').innerText()),
      UI_TIMEOUT, 'the page log does not show the 1012 rebalance close');
  });

  step('the page reconnects by itself through HAProxy and prints R-2 exactly once', async () => {
    await waitForState(page, 'open', UI_TIMEOUT * 2);
    await printedRow(page, 'R-2', UI_TIMEOUT);
    await delay(SETTLE_MS);
    const frames = sockets.flatMap((s) => s.received.filter((f) => f.type === 'message'));
    assert.deepEqual(frames.map((m) => m.data?.id), ['R-1', 'R-2'], 'each order once, in order, over every socket');
    assert.deepEqual(await orderTitles(page), ['#R-2', '#R-1']);
    const second = sockets.at(-1);
    assert.ok(new URL(second.url).searchParams.has('since'), `the reconnect resumes from the stored cursor: ${second.url}`);
    assert.equal(new URL(second.url).host, `127.0.0.1:${lbPort}`, 'through the balancer');
  });

  step('a live order after the reconnect is printed once too', async () => {
    await publish(podUrl(pods[0]), order('R-3', 'Ramen'));
    await printedRow(page, 'R-3', UI_TIMEOUT);
    await delay(SETTLE_MS);
    const frames = sockets.flatMap((s) => s.received.filter((f) => f.type === 'message'));
    assert.deepEqual(frames.map((m) => m.data?.id), ['R-1', 'R-2', 'R-3']);
    await page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: UI_TIMEOUT });
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  });
});

// ---- helpers ----

async function startPod(pod) {
  const args = ['serve', '--listen', `127.0.0.1:${pod.port}`, '--nats-url', natsUrl, '--pod-name', pod.name,
    '--durable', '--rebalance-rate', '0.5'];
  pod.proc = spawnLogged(HERALD_BIN, args, { log, env: { HERALD_DRAIN_TIMEOUT: '1s' } });
  await waitFor200(`${podUrl(pod)}/readyz`, { proc: pod.proc, timeoutMs: READY_TIMEOUT, logFile: LOG, name: pod.name });
}

const podUrl = (pod) => `http://127.0.0.1:${pod.port}`;

async function metric(pod, name) {
  const text = await fetch(`${podUrl(pod)}/metrics`, { signal: AbortSignal.timeout(5000) }).then((r) => r.text());
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

function order(id, item) {
  return { user: USER, event: 'order', data: { id, item, total: 9.5 } };
}

/** Records every hub WebSocket of the page with its frames, parsed, and whether it closed. */
function watchSockets(p) {
  const list = [];
  const parse = (payload) => { try { return JSON.parse(String(payload)); } catch { return { raw: String(payload) }; } };
  p.on('websocket', (ws) => {
    if (!new URL(ws.url()).pathname.startsWith('/websocket/')) return;
    const s = { url: ws.url(), received: [], closed: false };
    list.push(s);
    ws.on('framereceived', ({ payload }) => s.received.push(parse(payload)));
    ws.on('close', () => { s.closed = true; });
  });
  return list;
}

/**
 * A session held on the pod directly (a raw upgrade, frames ignored), opened again 200 ms
 * after it is closed: the pod stays above its bound, so it goes on shedding until every
 * session it holds, the page's among them, has been shed once.
 */
function filler(port, user) {
  if (fillers.stopping) return;
  const sock = net.connect({ host: '127.0.0.1', port }, () => {
    sock.write(`GET /websocket/${user} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
      'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  });
  fillers.sockets.add(sock);
  let buf = Buffer.alloc(0);
  let upgraded = false;
  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (!upgraded) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      upgraded = true;
      buf = buf.subarray(end + 4);
    }
    // Server frames are unmasked: answer a ping with a pong and a close with a close.
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 0x0f;
      let len = buf[1] & 0x7f;
      let at = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); at = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); at = 10; }
      if (buf.length < at + len) return;
      const payload = buf.subarray(at, at + len);
      buf = buf.subarray(at + len);
      if (opcode === 0x9) sock.write(clientFrame(0xa, payload));
      if (opcode === 0x8) { sock.end(clientFrame(0x8, payload.subarray(0, 2))); return; }
    }
  });
  sock.on('error', () => {});
  sock.on('close', () => {
    fillers.sockets.delete(sock);
    if (!fillers.stopping) setTimeout(() => filler(port, user), 200);
  });
}

/** A masked client frame (mask of zeros: the payload goes as it is) of at most 125 bytes. */
function clientFrame(opcode, payload) {
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}
