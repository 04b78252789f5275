// The Server-Sent Events fallback: an EventSource on /sse/{user} for the server's frames,
// one POST per client frame to /sse/{user}/{session}, chosen when WebSocket is missing or
// failed to open `fallbackAfter` times in a row; WebSocket is tried again later.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { fakeEventSource, fakeFetch, fakeJwt, flush, memoryStorage, setupSseClient } from '../testkit/fakes.js';

const MIN = 60_000;

function setup(options = {}) {
  return setupSseClient(HeraldClient, options);
}

/** A client on SSE from the start (no WebSocket at all), welcomed as session sse-1. */
async function onSse(options = {}) {
  const t = setup({ WebSocket: null, pingIntervalMs: 0, ...options });
  t.client.connect();
  await flush();
  t.es.last().welcome('sse-1');
  await flush();
  return t;
}

/** A client that fell back to SSE after two failed WebSocket opens, welcomed as sse-1. */
async function fellBack(options = {}) {
  const t = setup({ pingIntervalMs: 0, random: () => 0, ...options });
  t.client.connect();
  await flush();
  t.ws.last().fail();
  t.clock.advance(0);
  await flush();
  t.ws.last().fail();
  t.clock.advance(0);
  await flush();
  assert.equal(t.es.streams.length, 1, 'on SSE now');
  t.es.last().welcome('sse-1');
  await flush();
  return t;
}

test('falls back to SSE after fallbackAfter (default 2) WebSocket opens failed in a row', async () => {
  const { client, ws, es, clock, states } = setup({ token: 's3cret', device: 'printer-1', cursor: 'c9', random: () => 0 });
  assert.equal(client.transport, 'websocket');
  client.connect();
  await flush();
  ws.last().fail();
  clock.advance(0);
  await flush();
  assert.equal(ws.sockets.length, 2, 'the second attempt is a WebSocket still');
  assert.equal(es.streams.length, 0);
  ws.last().fail();
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).transport, 'websocket', 'the transport that failed');
  clock.advance(0);
  await flush();
  assert.equal(ws.sockets.length, 2, 'no third WebSocket');
  assert.equal(es.streams.length, 1);
  assert.equal(client.transport, 'sse');
  const url = new URL(es.last().url);
  assert.equal(url.origin, 'http://hub.test:8080');
  assert.equal(url.pathname, '/sse/merchant1');
  assert.equal(url.searchParams.get('token'), 's3cret');
  assert.equal(url.searchParams.get('device'), 'printer-1');
  assert.equal(url.searchParams.get('since'), 'c9');
  assert.equal(es.last().withCredentials, false, 'a token in the query needs no cookie');
  assert.equal(client.state, 'reconnecting', 'open only at the welcome');
  es.last().welcome('sse-1');
  assert.equal(client.state, 'open');
  assert.equal(states.at(-1).transport, 'sse');
  assert.equal(client.session, 'sse-1');
});

test('fallbackAfter sets how many failed opens it takes; an open WebSocket resets the count', async () => {
  const { client, ws, es, clock } = setup({ fallbackAfter: 3, random: () => 0 });
  client.connect();
  const next = async () => { clock.advance(0); await flush(); };
  await flush();
  ws.last().fail();
  await next();
  ws.last().fail();
  await next();
  ws.last().open(); // opened: not failing to open, so the count starts again
  ws.last().serverClose(1006);
  await next();
  ws.last().fail();
  await next();
  ws.last().fail();
  await next();
  assert.equal(es.streams.length, 0, 'two failures in a row since the last open');
  ws.last().fail();
  await next();
  assert.equal(ws.sockets.length, 6);
  assert.equal(es.streams.length, 1);
  assert.equal(client.transport, 'sse');
});

test('a connect timeout counts as a failed WebSocket open', async () => {
  const { client, ws, es, clock } = setup({ connectTimeoutMs: 5000, random: () => 0 });
  client.connect();
  await flush();
  clock.advance(5000); // the first socket never opens
  await flush();
  clock.advance(5000); // nor the second
  await flush();
  assert.equal(ws.sockets.length, 2);
  assert.equal(es.streams.length, 1);
  assert.equal(client.transport, 'sse');
});

test('without any WebSocket (and EventSource there) the constructor does not throw: SSE at once', async () => {
  const saved = { WebSocket: globalThis.WebSocket, EventSource: globalThis.EventSource, fetch: globalThis.fetch };
  const es = fakeEventSource();
  const http = fakeFetch();
  try {
    delete globalThis.WebSocket;
    globalThis.EventSource = es.FakeEventSource;
    globalThis.fetch = http.fetch;
    const client = new HeraldClient({ url: 'https://hub.test', user: 'u1', cursorStorage: false, pingIntervalMs: 0 });
    assert.equal(client.transport, 'sse');
    const states = [];
    client.on('state', (s, info) => states.push([s, info.transport]));
    client.connect();
    await flush();
    assert.equal(es.streams.length, 1);
    assert.equal(es.last().url, 'https://hub.test/sse/u1');
    assert.equal(es.last().withCredentials, true, 'no token: cookie auth, so the cookie goes cross-origin too');
    es.last().welcome('s-9');
    assert.deepEqual(states, [['connecting', 'sse'], ['open', 'sse']]);
    assert.equal(client.publish('hello', { a: 1 }), true);
    await flush();
    assert.equal(http.last().url, 'https://hub.test/sse/u1/s-9');
    assert.equal(http.last().init.credentials, 'include');
    client.close();
  } finally {
    if (saved.WebSocket) globalThis.WebSocket = saved.WebSocket;
    if (saved.EventSource) globalThis.EventSource = saved.EventSource; else delete globalThis.EventSource;
    globalThis.fetch = saved.fetch;
  }
});

test('transports: ["sse"] uses SSE only, ["websocket"] never falls back; no usable one throws', async () => {
  const a = setup({ transports: ['sse'] });
  a.client.connect();
  await flush();
  assert.equal(a.ws.sockets.length, 0);
  assert.equal(a.es.streams.length, 1);

  const b = setup({ transports: ['websocket'], random: () => 0 });
  b.client.connect();
  for (let i = 0; i < 5; i++) {
    await flush();
    b.ws.last().fail();
    b.clock.advance(0);
  }
  await flush();
  assert.equal(b.ws.sockets.length, 6);
  assert.equal(b.es.streams.length, 0);

  const es = fakeEventSource();
  const base = { url: 'http://x', user: 'u', EventSource: es.FakeEventSource, fetch: fakeFetch().fetch, WebSocket: null };
  assert.throws(() => new HeraldClient({ ...base, transports: ['websocket'] }), /WebSocket/);
  assert.throws(() => new HeraldClient({ ...base, EventSource: null }), /WebSocket.*EventSource/);
  assert.throws(() => new HeraldClient({ ...base, transports: ['sse'], fetch: null }), /EventSource or fetch/);
  assert.throws(() => new HeraldClient({ ...base, transports: ['carrier-pigeon'] }), /transports/);
  assert.throws(() => new HeraldClient({ ...base, transports: [] }), /transports/);
});

test('messages arrive as SSE events; the cursor is kept, stored and sent as since= on reconnect', async () => {
  const storage = memoryStorage();
  const { client, es, clock } = await onSse({ cursorStorage: storage, random: () => 0 });
  const seen = [];
  client.on('message', (m) => seen.push([m.id, m.data]));
  es.last().message({ id: 'm1', cursor: 'c1', data: { n: 1 } });
  es.last().message({ id: 'm2', cursor: 'c2', data: { n: 2 } });
  es.last().frame({ type: 'message', id: 'b1', cursor: 'cb', source: 'broadcast', data: 'hi' }, { id: 'cb' });
  assert.deepEqual(seen, [['m1', { n: 1 }], ['m2', { n: 2 }], ['b1', 'hi']]);
  assert.equal(client.cursor, 'c2', 'broadcast cursors do not move it');
  assert.equal(storage.peek('herald.cursor.merchant1'), 'c2');

  const first = es.last();
  first.drop(); // the stream ended without a close event (herald killed, network gone)
  assert.equal(first.closed, true, 'the client closes the EventSource: no blind browser reconnect');
  assert.equal(client.state, 'reconnecting');
  clock.advance(0);
  await flush();
  assert.equal(es.streams.length, 2);
  assert.equal(es.last().query.get('since'), 'c2');
});

test('client frames are POSTed to /sse/{user}/{session}, one JSON frame each, with the token', async () => {
  const { client, es, http } = await onSse({ token: 'tok-1', user: 'a=b' });
  assert.equal(es.last().path, '/sse/a%3Db');
  assert.equal(client.publish('printed', { id: 'A-1' }), true);
  const sub = client.subscribe('orders.store-42');
  await flush();
  assert.equal(http.requests.length, 2);
  for (const req of http.requests) {
    assert.equal(req.method, 'POST');
    assert.equal(req.path, '/sse/a%3Db/sse-1');
    assert.equal(req.query.get('token'), 'tok-1');
    assert.equal(req.headers.Authorization, 'Bearer tok-1');
    assert.equal(req.headers['Content-Type'], 'application/json');
    assert.equal(typeof req.init.body, 'string');
  }
  assert.deepEqual(http.bodies(), [
    { type: 'publish', event: 'printed', data: { id: 'A-1' } },
    { type: 'subscribe', topic: 'orders.store-42' },
  ]);
  es.last().frame({ type: 'subscribed', topic: 'orders.store-42' });
  assert.equal(await sub, 'orders.store-42');
  client.unsubscribe('orders.store-42');
  await flush();
  assert.deepEqual(http.bodies().at(-1), { type: 'unsubscribe', topic: 'orders.store-42' });
});

test('nothing is POSTed before the welcome; topics are (re)subscribed at each welcome', async () => {
  const { client, es, http, clock } = setup({ WebSocket: null, pingIntervalMs: 0, random: () => 0 });
  client.connect();
  const sub = client.subscribe('t1');
  await flush();
  es.last().open();
  assert.equal(client.publish('x'), false, 'no session yet');
  await flush();
  assert.equal(http.requests.length, 0);
  es.last().welcome('s1');
  await flush();
  assert.deepEqual(http.bodies(), [{ type: 'subscribe', topic: 't1' }]);
  es.last().frame({ type: 'subscribed', topic: 't1' });
  await sub;

  es.last().serverClose(1012, 'restart');
  clock.advance(0);
  await flush();
  es.last().welcome('s2');
  await flush();
  assert.equal(http.last().path, '/sse/merchant1/s2');
  assert.deepEqual(http.last().body, { type: 'subscribe', topic: 't1' });
});

test('POSTs go one at a time, in order', async () => {
  const { client, http } = await onSse();
  http.manual = true;
  client.publish('a');
  client.publish('b');
  client.publish('c');
  await flush();
  assert.equal(http.requests.length, 1, 'the next waits for the answer to the first');
  http.last().respond(202);
  await flush();
  assert.equal(http.requests.length, 2);
  http.last().respond(202);
  await flush();
  http.last().respond(202);
  await flush();
  assert.deepEqual(http.bodies().map((b) => b.event), ['a', 'b', 'c']);
});

test('close event 4001 (and the other final codes): closed, no reconnect, EventSource closed', async () => {
  for (const code of [1000, 1008, 4001, 4004]) {
    const { client, es, clock, states } = await onSse();
    const stream = es.last();
    stream.serverClose(code, 'replaced');
    assert.equal(stream.closed, true);
    assert.equal(client.state, 'closed', `code ${code}`);
    assert.equal(states.at(-1).code, code);
    assert.equal(states.at(-1).reason, 'replaced');
    assert.deepEqual(clock.pending(), [], `no timer left after ${code}`);
    clock.advance(3_600_000);
    await flush();
    assert.equal(es.streams.length, 1, `no new stream after ${code}`);
  }
});

test('close event 1012: reconnects after random(0, restartDelayMs) with since= the cursor', async () => {
  const { client, es, clock, states } = await onSse({ random: () => 0.5, restartDelayMs: 4000 });
  es.last().message({ id: 'm1', cursor: 'c1', data: 1 });
  es.last().serverClose(1012, 'restart');
  assert.equal(es.streams[0].closed, true);
  assert.equal(client.state, 'reconnecting');
  assert.equal(states.at(-1).code, 1012);
  assert.deepEqual(clock.pending(), [2000]);
  clock.advance(2000);
  await flush();
  assert.equal(es.streams.length, 2);
  assert.equal(es.last().query.get('since'), 'c1');
});

test('close events 4003 ask the token function again; a refused stream too', async () => {
  let calls = 0;
  const { es, clock } = await onSse({ token: () => `tok-${++calls}`, random: () => 0 });
  es.last().serverClose(4003, 'token_expired');
  clock.advance(0);
  await flush();
  assert.equal(es.last().query.get('token'), 'tok-2');
  es.last().refuse(); // 401 before the stream started: EventSource error + CLOSED
  clock.advance(MIN);
  await flush();
  assert.equal(es.last().query.get('token'), 'tok-3');
  assert.equal(es.streams.length, 3);
});

test('a POST answered 404 means the session is gone: the stream is dropped and reopened', async () => {
  const { client, es, http, clock, errors } = await onSse({ random: () => 0 });
  es.last().message({ id: 'm1', cursor: 'c1', data: 1 });
  http.replies.push(404);
  assert.equal(client.publish('x'), true);
  await flush();
  assert.equal(es.streams[0].closed, true);
  assert.equal(client.state, 'reconnecting');
  assert.equal(errors.at(-1).code, 'transport');
  assert.match(errors.at(-1).message, /404/);
  clock.advance(0);
  await flush();
  assert.equal(es.streams.length, 2);
  assert.equal(es.last().query.get('since'), 'c1');
});

test('a POST that fails (network) or hangs past connectTimeoutMs drops the stream too', async () => {
  const a = await onSse();
  a.http.replies.push(new TypeError('fetch failed'));
  a.client.publish('x');
  await flush();
  assert.equal(a.client.state, 'reconnecting');
  assert.match(a.errors.at(-1).message, /fetch failed/);

  const b = await onSse({ connectTimeoutMs: 5000 });
  b.http.manual = true;
  b.client.publish('x');
  await flush();
  b.clock.advance(4999);
  await flush();
  assert.equal(b.client.state, 'open');
  b.clock.advance(1);
  await flush();
  assert.equal(b.client.state, 'reconnecting');
  assert.equal(b.http.last().init.signal.aborted, true, 'the hanging request is aborted');
});

test('a refused POST (429, 401, 400) is reported; a refused subscribe rejects; the stream stays', async () => {
  const { client, es, http, errors } = await onSse();
  http.replies.push({ status: 429, body: 'rate limited\n' });
  const sub = client.subscribe('t1');
  const other = client.subscribe('t2');
  await flush();
  await assert.rejects(sub, (err) => err.code === 'rate_limited' && err.topic === 't1' && err.status === 429);
  assert.equal(errors.at(-1).topic, 't1');
  assert.match(errors.at(-1).message, /429 rate limited$/);
  // t2's POST went through; a refusal on the stream now belongs to t2, not t1.
  es.last().frame({ type: 'error', code: 'forbidden', message: 'topic not allowed' });
  await assert.rejects(other, (err) => err.code === 'forbidden' && err.topic === 't2');

  http.replies.push(401, 400);
  client.publish('a');
  client.publish('b');
  await flush();
  assert.deepEqual(errors.slice(-2).map((e) => [e.code, e.status]), [['unauthorized', 401], ['bad_frame', 400]]);
  assert.equal(client.state, 'open');
  assert.equal(es.streams.length, 1);
});

test('error frames on the stream (event: error) are frames, not transport failures', async () => {
  const { client, es, errors } = await onSse();
  es.last().frame({ type: 'error', code: 'rate_limited', message: 'slow down' });
  assert.equal(client.state, 'open');
  assert.equal(errors.at(-1).code, 'rate_limited');
  assert.equal(es.last().closed, false);
});

test('a stream that opens but sends no welcome is given up after connectTimeoutMs', async () => {
  const { client, es, clock } = setup({ WebSocket: null, connectTimeoutMs: 5000 });
  client.connect();
  await flush();
  es.last().open();
  clock.advance(4999);
  assert.equal(es.last().closed, false);
  clock.advance(1);
  assert.equal(es.last().closed, true);
  assert.equal(client.state, 'reconnecting');
});

test('pings are POSTed every pingIntervalMs and answered on the stream; silence drops it', async () => {
  const { client, es, http, clock, errors } = await onSse({ pingIntervalMs: 20000 });
  clock.advance(20000);
  await flush();
  assert.deepEqual(http.bodies('ping'), [{ type: 'ping' }]);
  es.last().frame({ type: 'pong' });
  clock.advance(20000);
  await flush();
  assert.equal(http.bodies('ping').length, 2);
  assert.equal(client.state, 'open');
  clock.advance(20000); // no frame since the last ping
  await flush();
  assert.equal(es.streams[0].closed, true);
  assert.equal(client.state, 'reconnecting');
  assert.equal(errors.at(-1).message, 'no reply to ping');
});

test('token refresh over POST: the refresh frame, then POSTs carry the new token', async () => {
  let calls = 0;
  let clock;
  const token = async () => {
    calls++;
    return fakeJwt({ sub: 'merchant1', n: calls, iat: clock.now / 1000, exp: (clock.now + 10 * MIN) / 1000 });
  };
  const t = setup({ WebSocket: null, token, pingIntervalMs: 0 });
  clock = t.clock;
  t.client.connect();
  await flush();
  const first = t.es.last().query.get('token');
  t.es.last().welcome('s1');
  t.clock.advance(9 * MIN);
  await flush();
  const [refresh] = t.http.bodies('refresh');
  assert.ok(refresh, 'a refresh frame was POSTed');
  assert.notEqual(refresh.token, first);
  assert.equal(t.http.last().headers.Authorization, `Bearer ${first}`, 'sent with the current token');
  t.es.last().frame({ type: 'refreshed', exp: (t.clock.now + 10 * MIN) / 1000 });
  t.client.publish('after');
  await flush();
  assert.equal(t.http.last().headers.Authorization, `Bearer ${refresh.token}`);
  assert.equal(t.http.last().query.get('token'), refresh.token);
  assert.equal(t.es.streams.length, 1, 'no reconnect');
});

test('a refresh POST that is refused reconnects with a fresh token', async () => {
  let calls = 0;
  let clock;
  const token = async () => fakeJwt({ sub: 'merchant1', n: ++calls, exp: (clock.now + 10 * MIN) / 1000 });
  const t = setup({ WebSocket: null, token, pingIntervalMs: 0, random: () => 0 });
  clock = t.clock;
  t.client.connect();
  await flush();
  t.es.last().welcome('s1');
  t.http.replies.push(401);
  t.clock.advance(9 * MIN);
  await flush();
  assert.equal(t.http.bodies('refresh').length, 1);
  assert.equal(t.client.state, 'reconnecting');
  t.clock.advance(0);
  await flush();
  assert.equal(t.es.streams.length, 2);
  assert.equal(calls, 3, 'the reconnect asked the token function again');
});

test('close() closes the stream and POSTs nothing more', async () => {
  const { client, es, http, clock } = await onSse({ pingIntervalMs: 1000 });
  http.manual = true;
  client.publish('a');
  client.publish('b');
  await flush();
  client.close();
  await flush();
  assert.equal(es.last().closed, true);
  assert.equal(http.requests.length, 1);
  assert.equal(http.last().init.signal.aborted, true);
  clock.advance(60_000);
  await flush();
  assert.equal(http.requests.length, 1);
  assert.equal(client.state, 'closed');
});

test('on SSE after a fallback, a reconnect tries WebSocket again once retryWebSocketMs passed', async () => {
  let r = 0;
  const { client, ws, es, clock } = await fellBack({ retryWebSocketMs: 10 * MIN, random: () => r });
  const next = async () => { clock.advance(0); await flush(); };
  es.last().serverClose(1006);
  await next();
  assert.equal(es.streams.length, 2, 'too early: SSE again');
  assert.equal(ws.sockets.length, 2);
  es.last().welcome('sse-2');
  // The stream ends just before the probe would start (which is another test): the
  // reconnect, 1.5 s later, is the first attempt after retryWebSocketMs.
  clock.advance(10 * MIN - 1);
  r = 0.5;
  es.last().serverClose(1012);
  r = 0;
  clock.advance(1500);
  await flush();
  assert.equal(ws.sockets.length, 3, 'WebSocket tried again');
  assert.equal(client.transport, 'websocket');
  ws.last().fail(); // one more failure: straight back to SSE
  await next();
  assert.equal(ws.sockets.length, 3);
  assert.equal(es.streams.length, 3);
  assert.equal(client.transport, 'sse');
});

test('a WebSocket that works again is kept', async () => {
  let r = 0;
  const { client, ws, es, clock } = await fellBack({ retryWebSocketMs: MIN, random: () => r });
  clock.advance(MIN - 1);
  r = 0.5;
  es.last().serverClose(4002, 'idle'); // reconnect in 250 ms, after retryWebSocketMs
  r = 0;
  clock.advance(250);
  await flush();
  assert.equal(ws.sockets.length, 3);
  ws.last().open();
  assert.equal(client.transport, 'websocket');
  ws.last().serverClose(1006);
  clock.advance(MIN);
  await flush();
  ws.last().fail(); // a single failure after an open: no fallback yet
  clock.advance(MIN);
  await flush();
  assert.equal(ws.sockets.length, 5);
  assert.equal(es.streams.length, 1, 'no SSE since');
});

test('while SSE works, a WebSocket is tried alongside every retryWebSocketMs; a failed one changes nothing', async () => {
  const { client, ws, es, clock, states, errors } = await fellBack({ retryWebSocketMs: 10 * MIN });
  const before = states.length;
  const errorsBefore = errors.length;
  clock.advance(10 * MIN - 1);
  assert.equal(ws.sockets.length, 2);
  clock.advance(1);
  assert.equal(ws.sockets.length, 3, 'a probe');
  ws.last().fail();
  assert.equal(client.state, 'open');
  assert.equal(client.transport, 'sse');
  assert.equal(states.length, before, 'no state change');
  assert.equal(errors.length, errorsBefore, 'no error reported for the probe');
  assert.equal(es.last().closed, false);
  // Next probe 10 minutes after this one; a probe that never answers is given up too.
  clock.advance(10 * MIN);
  assert.equal(ws.sockets.length, 4);
  clock.advance(10_000); // connectTimeoutMs
  assert.equal(ws.last().closedWith?.code, 1000);
  assert.equal(client.transport, 'sse');
  clock.advance(10 * MIN);
  assert.equal(ws.sockets.length, 5);
});

test('a probe that is welcomed takes over: SSE closed, topics on the WebSocket, no duplicate', async () => {
  const { client, ws, es, http, clock, states } = await fellBack({ retryWebSocketMs: MIN });
  const sub = client.subscribe('t1');
  await flush();
  es.last().frame({ type: 'subscribed', topic: 't1' });
  await sub;
  const seen = [];
  client.on('message', (m) => seen.push(m.id));
  es.last().message({ id: 'm1', cursor: 'c1', data: 1 });
  clock.advance(MIN);
  const probe = ws.last();
  assert.equal(ws.sockets.length, 3);
  assert.equal(probe.query.get('since'), 'c1', 'the probe resumes after what SSE delivered');
  probe.open();
  assert.equal(client.transport, 'sse', 'still SSE until the probe is welcomed');
  es.last().message({ id: 'm2', cursor: 'c2', data: 2 }); // while the probe connects
  probe.receive({ type: 'welcome', session: 'ws-1', user: 'merchant1', recovered: true, replayed: 1 });
  assert.equal(client.transport, 'websocket');
  assert.equal(client.session, 'ws-1');
  assert.equal(es.last().closed, true);
  assert.deepEqual(states.at(-1), { state: 'open', transport: 'websocket' });
  assert.deepEqual(probe.sentOf('subscribe'), [{ type: 'subscribe', topic: 't1' }]);
  probe.receive({ type: 'message', id: 'm2', cursor: 'c2', source: 'user', data: 2 }); // replayed
  probe.receive({ type: 'message', id: 'm3', cursor: 'c3', source: 'user', data: 3 });
  assert.deepEqual(seen, ['m1', 'm2', 'm3'], 'm2 once');
  assert.equal(client.cursor, 'c3');
  const posts = http.requests.length;
  assert.equal(client.publish('x'), true);
  await flush();
  assert.equal(http.requests.length, posts, 'frames go over the WebSocket now');
  assert.deepEqual(probe.sentOf('publish'), [{ type: 'publish', event: 'x' }]);
  es.last().message({ id: 'late', cursor: 'cx', data: 0 }); // the old stream is ignored
  assert.deepEqual(seen, ['m1', 'm2', 'm3']);
});

test('a 4001 on the stream while a probe connects waits for the probe (it may be what replaced it)', async () => {
  const a = await fellBack({ retryWebSocketMs: MIN, device: 'printer-1' });
  a.clock.advance(MIN);
  assert.equal(a.ws.last().query.get('device'), 'printer-1');
  a.es.last().serverClose(4001, 'replaced');
  assert.equal(a.client.state, 'open', 'not closed yet');
  a.ws.last().open();
  a.ws.last().receive({ type: 'welcome', session: 'ws-1', user: 'merchant1' });
  assert.equal(a.client.state, 'open');
  assert.equal(a.client.transport, 'websocket');

  const b = await fellBack({ retryWebSocketMs: MIN, device: 'printer-1' });
  b.clock.advance(MIN);
  b.es.last().serverClose(4001, 'replaced');
  b.ws.last().fail(); // the probe did not replace it: someone else did
  assert.equal(b.client.state, 'closed');
  assert.equal(b.states.at(-1).code, 4001);
  b.clock.advance(60 * MIN);
  await flush();
  assert.equal(b.ws.sockets.length, 3);
  assert.equal(b.es.streams.length, 1);
});

test('retryWebSocketMs: 0 stays on SSE; no probe without a WebSocket', async () => {
  const a = await fellBack({ retryWebSocketMs: 0 });
  assert.deepEqual(a.clock.pending(), []);
  a.es.last().serverClose(1006);
  a.clock.advance(60 * MIN);
  await flush();
  assert.equal(a.ws.sockets.length, 2);
  assert.equal(a.es.streams.length, 2);

  const b = await onSse({ retryWebSocketMs: 1000 });
  assert.deepEqual(b.clock.pending(), []);
});

test('close() while a probe connects closes the probe as well', async () => {
  const { client, ws, es, clock } = await fellBack({ retryWebSocketMs: MIN });
  clock.advance(MIN);
  client.close();
  assert.equal(ws.last().closedWith?.code, 1000);
  assert.equal(es.last().closed, true);
  ws.last().open();
  ws.last().receive({ type: 'welcome', session: 'late' });
  assert.equal(client.state, 'closed');
  assert.deepEqual(clock.pending(), []);
});
