// Connection lifecycle: URL, backoff with full jitter, close codes, tokens, cursor, pings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { flush, setupClient } from '../testkit/fakes.js';

const ALMOST_ONE = 1 - 1e-9; // random() just below 1: the delay lands at the top of its window

function setup(options = {}) {
  return setupClient(HeraldClient, options);
}

async function connected(options) {
  const t = setup(options);
  t.client.connect();
  await flush();
  t.ws.last().open();
  return t;
}

test('builds the socket URL from an http(s) or ws base, user, token and device', async () => {
  const a = setup({ url: 'http://hub.test:8080/', user: 'a=b', token: 's3cret', device: 'printer-1' });
  a.client.connect();
  await flush();
  const url = new URL(a.ws.last().url);
  assert.equal(url.origin, 'ws://hub.test:8080');
  assert.equal(url.pathname, '/websocket/a%3Db');
  assert.equal(url.searchParams.get('token'), 's3cret');
  assert.equal(url.searchParams.get('device'), 'printer-1');
  assert.equal(url.searchParams.has('since'), false);

  const b = setup({ url: 'https://hub.test' });
  b.client.connect();
  await flush();
  assert.equal(b.ws.last().url, 'wss://hub.test/websocket/merchant1');
});

test('state goes connecting -> open and welcome is reported', async () => {
  const { client, ws, states } = setup();
  const welcomes = [];
  client.on('welcome', (w) => welcomes.push(w));
  client.connect();
  assert.equal(client.state, 'connecting');
  await flush();
  ws.last().open();
  ws.last().receive({ type: 'welcome', session: 's1', user: 'merchant1', pod: 'p1', heartbeat_ms: 25000 });
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'open']);
  assert.equal(welcomes.length, 1);
  assert.equal(client.session, 's1');
});

test('backoff doubles from initialMs up to maxMs, with full jitter at the top of the window', async () => {
  const { client, ws, clock, states } = setup({ random: () => ALMOST_ONE, backoff: { initialMs: 500, maxMs: 30000 } });
  client.connect();
  const caps = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000];
  for (const [i, cap] of caps.entries()) {
    await flush();
    assert.equal(ws.sockets.length, i + 1);
    ws.last().fail();
    assert.deepEqual(clock.pending(), [cap - 1], `attempt ${i + 1}`);
    assert.equal(states.at(-1).state, 'reconnecting');
    assert.equal(states.at(-1).delayMs, cap - 1);
    clock.advance(cap - 2);
    await flush();
    assert.equal(ws.sockets.length, i + 1, 'no reconnect before the delay ends');
    clock.advance(1);
  }
  // A welcome means the session worked: the ladder starts again from initialMs.
  await flush();
  ws.last().open();
  ws.last().receive({ type: 'welcome', session: 's', user: 'merchant1' });
  ws.last().serverClose(4002, 'idle');
  assert.deepEqual(clock.pending(), [499]);
});

test('full jitter: random() = 0 reconnects at once, 0.25 at a quarter of the window', async () => {
  let r = 0;
  const { client, ws, clock } = setup({ random: () => r });
  client.connect();
  await flush();
  ws.last().fail();
  assert.deepEqual(clock.pending(), [0]);
  clock.advance(0);
  await flush();
  r = 0.25;
  ws.last().fail(); // second failure: window 1000
  assert.deepEqual(clock.pending(), [250]);
});

test('no reconnect after 1000, 1008, 1009, 4001 and 4004', async () => {
  for (const code of [1000, 1008, 1009, 4001, 4004]) {
    const { client, ws, clock, states } = await connected();
    ws.last().serverClose(code, 'bye');
    assert.equal(client.state, 'closed', `code ${code}`);
    assert.equal(states.at(-1).code, code);
    assert.deepEqual(clock.pending(), [], `no timer left after ${code}`);
    clock.advance(3_600_000);
    await flush();
    assert.equal(ws.sockets.length, 1, `no new socket after ${code}`);
  }
});

test('reconnects after 1001, 1006, 1011, 1012, 4002, 4003, 4008 and 4029', async () => {
  for (const code of [1001, 1006, 1011, 1012, 4002, 4003, 4008, 4029]) {
    const { client, ws, clock } = await connected({ token: () => 't' });
    ws.last().serverClose(code, '');
    assert.equal(client.state, 'reconnecting', `code ${code}`);
    clock.advance(60_000);
    await flush();
    assert.equal(ws.sockets.length, 2, `reconnected after ${code}`);
  }
});

test('1012 waits a random delay over restartDelayMs, 4029 starts higher up the ladder', async () => {
  const a = await connected({ random: () => ALMOST_ONE, restartDelayMs: 10000 });
  a.ws.last().serverClose(1012, 'draining');
  assert.deepEqual(a.clock.pending(), [9999]);

  const b = await connected({ random: () => 0.5 });
  b.ws.last().serverClose(1012, 'draining');
  assert.deepEqual(b.clock.pending(), [1500], 'default window is 3000 ms');

  const c = await connected({ random: () => ALMOST_ONE });
  c.ws.last().serverClose(4029, 'rate limited');
  assert.deepEqual(c.clock.pending(), [3999], 'window 500 * 2^3');
});

test('close() sends 1000 and stops for good, also while waiting to reconnect', async () => {
  const { client, ws, clock, states } = await connected();
  client.close();
  assert.deepEqual(ws.last().closedWith, { code: 1000, reason: 'client closed' });
  assert.equal(client.state, 'closed');
  assert.deepEqual(clock.pending(), []);

  const b = setup();
  b.client.connect();
  await flush();
  b.ws.last().fail();
  assert.equal(b.client.state, 'reconnecting');
  b.client.close();
  assert.deepEqual(b.clock.pending(), []);
  b.clock.advance(60_000);
  await flush();
  assert.equal(b.ws.sockets.length, 1);
  assert.equal(states.at(-1).state, 'closed');
});

test('close() while the token function is pending opens no socket', async () => {
  let release;
  const { client, ws } = setup({ token: () => new Promise((resolve) => { release = resolve; }) });
  client.connect();
  await flush();
  client.close();
  release('late-token');
  await flush();
  assert.equal(ws.sockets.length, 0);
  assert.equal(client.state, 'closed');
});

test('a token function is called once, and again for a fresh token after 4003', async () => {
  let calls = 0;
  const { client, ws, clock } = setup({ token: async () => `tok-${++calls}` });
  client.connect();
  await flush();
  assert.equal(ws.last().query.get('token'), 'tok-1');
  ws.last().open();

  ws.last().serverClose(4002, 'idle'); // not a token problem: reuse the token
  clock.advance(60_000);
  await flush();
  assert.equal(calls, 1);
  assert.equal(ws.last().query.get('token'), 'tok-1');
  ws.last().open();

  ws.last().serverClose(4003, 'token expired');
  clock.advance(60_000);
  await flush();
  assert.equal(calls, 2);
  assert.equal(ws.last().query.get('token'), 'tok-2');
});

test('a connection refused before opening asks for a fresh token (401 looks like 1006)', async () => {
  let calls = 0;
  const { client, ws, clock } = setup({ token: () => `tok-${++calls}` });
  client.connect();
  await flush();
  ws.last().fail();
  clock.advance(60_000);
  await flush();
  assert.equal(ws.last().query.get('token'), 'tok-2');
});

test('a failing token function reports an error and retries with backoff', async () => {
  let fail = true;
  const { client, ws, clock, errors } = setup({
    token: async () => { if (fail) throw new Error('auth down'); return 'ok'; },
  });
  client.connect();
  await flush();
  assert.equal(ws.sockets.length, 0);
  assert.equal(client.state, 'reconnecting');
  assert.equal(errors[0].code, 'token');
  assert.match(errors[0].message, /auth down/);
  fail = false;
  clock.advance(60_000);
  await flush();
  assert.equal(ws.last().query.get('token'), 'ok');
});

test('remembers the last cursor and sends it as since= on reconnect', async () => {
  const { client, ws, clock } = await connected();
  assert.equal(ws.last().query.has('since'), false);
  const seen = [];
  client.on('message', (m) => seen.push(m.id));
  ws.last().receive({ type: 'message', id: 'm1', cursor: 'c1', source: 'user', data: 1 });
  ws.last().receive({ type: 'message', id: 'm2', cursor: 'c2', source: 'user', data: 2 });
  assert.deepEqual(seen, ['m1', 'm2']);
  assert.equal(client.cursor, 'c2');
  ws.last().serverClose(1006);
  clock.advance(60_000);
  await flush();
  assert.equal(ws.last().query.get('since'), 'c2');
});

test('a cursor given in the options is sent on the first connect', async () => {
  const { ws } = await connected({ cursor: 'saved-7' });
  assert.equal(ws.last().query.get('since'), 'saved-7');
});

test('pings every pingIntervalMs while open, and drops a connection that stays silent', async () => {
  const { client, ws, clock, errors } = await connected({ pingIntervalMs: 20000 });
  const sock = ws.last();
  clock.advance(19999);
  assert.equal(sock.sentOf('ping').length, 0);
  clock.advance(1);
  assert.equal(sock.sentOf('ping').length, 1);
  sock.receive({ type: 'pong' });
  clock.advance(20000);
  assert.equal(sock.sentOf('ping').length, 2);
  assert.equal(client.state, 'open');
  // No frame at all during the next interval: the socket is abandoned and replaced.
  clock.advance(20000);
  assert.equal(sock.sentOf('ping').length, 2);
  assert.equal(sock.closedWith.code, 4000);
  assert.equal(client.state, 'reconnecting');
  assert.equal(errors.at(-1).code, 'transport');
});

test('no pings while the document is hidden; they resume when it is visible', async () => {
  const doc = { visibilityState: 'hidden' };
  const { client, ws, clock } = await connected({ pingIntervalMs: 1000, document: doc });
  clock.advance(10_000);
  assert.equal(ws.last().sentOf('ping').length, 0);
  assert.equal(client.state, 'open', 'silence while hidden is not a dead connection');
  doc.visibilityState = 'visible';
  clock.advance(1000);
  assert.equal(ws.last().sentOf('ping').length, 1);
});

test('a socket that never opens is given up after connectTimeoutMs', async () => {
  const { client, ws, clock } = setup({ connectTimeoutMs: 5000 });
  client.connect();
  await flush();
  clock.advance(4999);
  assert.equal(ws.last().closedWith, null);
  clock.advance(1);
  assert.equal(ws.last().closedWith.code, 4000);
  assert.equal(client.state, 'reconnecting');
});

test('events of a replaced socket are ignored', async () => {
  const { client, ws, clock } = await connected();
  const old = ws.last();
  old.serverClose(4002);
  clock.advance(60_000);
  await flush();
  const seen = [];
  client.on('message', (m) => seen.push(m.id));
  old.receive({ type: 'message', id: 'stale', cursor: 'x', source: 'user' });
  old.serverClose(4001);
  assert.deepEqual(seen, []);
  assert.notEqual(client.state, 'closed');
});

test('requires url, user and a WebSocket implementation', () => {
  assert.throws(() => new HeraldClient({ user: 'u', WebSocket: class {} }), /url/);
  assert.throws(() => new HeraldClient({ url: 'ws://x', WebSocket: class {} }), /user/);
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(() => new HeraldClient({ url: 'ws://x', user: 'u' }), /WebSocket/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

test('after a 1013 the client waits longer, spread out, and counts it; 4009 is final', async () => {
  const t = setup({ random: () => 0.5 });
  const states = [];
  t.client.on('state', (state, info) => states.push({ state, ...info }));
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.ws.last().serverClose(1013);
  await flush();
  const r = states.filter((s) => s.state === 'reconnecting').at(-1);
  assert.equal(r.code, 1013);
  assert.equal(r.tryLater, 1);
  // 1 s plus half of max(5 s, 500 ms * 2^3 = 4 s).
  assert.equal(r.delayMs, 1000 + 2500);
  t.clock.advance(r.delayMs);
  await flush();
  t.ws.last().open();
  t.ws.last().serverClose(4009);
  await flush();
  assert.equal(states.at(-1).state, 'closed');
  assert.equal(states.at(-1).code, 4009);
});
