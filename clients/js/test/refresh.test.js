// Token refresh: a `refresh` frame shortly before exp, `refreshed` schedules the next one,
// `bad_token` (or no answer) falls back to reconnecting with a fresh token before exp.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { fakeJwt, flush, setupClient } from '../testkit/fakes.js';

const MIN = 60_000;

/**
 * A connected client (welcome received) whose token function hands out tokens valid for
 * `lifetimeMs` from the fake clock's now, numbered by call: their `n` claim says which.
 */
async function connected({ lifetimeMs = 10 * MIN, iat = true, ...options } = {}) {
  let calls = 0;
  let clock;
  const token = async () => {
    calls++;
    const now = clock.now;
    return fakeJwt({ sub: 'merchant1', n: calls, exp: (now + lifetimeMs) / 1000, ...(iat ? { iat: now / 1000 } : {}) });
  };
  const t = setupClient(HeraldClient, { token, pingIntervalMs: 0, random: () => 0, ...options });
  clock = t.clock;
  t.calls = () => calls;
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.ws.last().receive({ type: 'welcome', session: 's1', user: 'merchant1', pod: 'p', heartbeat_ms: 25000 });
  return t;
}

/** The claims of a token the client sent. */
function claims(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
}

test('refreshes a tenth of the lifetime before exp, and again after "refreshed"', async () => {
  const t = await connected({ lifetimeMs: 10 * MIN });
  const refreshed = [];
  t.client.on('refreshed', (f) => refreshed.push(f));
  assert.deepEqual(t.clock.pending(), [9 * MIN], 'one timer: the refresh, 1 min before exp');
  t.clock.advance(9 * MIN - 1);
  await flush();
  assert.equal(t.ws.last().sentOf('refresh').length, 0);
  t.clock.advance(1);
  await flush();
  const [frame] = t.ws.last().sentOf('refresh');
  assert.equal(claims(frame.token).n, 2, 'a new token from the token function');
  assert.equal(claims(frame.token).exp, (9 * MIN + 10 * MIN) / 1000);

  t.ws.last().receive({ type: 'refreshed', exp: claims(frame.token).exp });
  assert.equal(refreshed.length, 1);
  assert.deepEqual(t.clock.pending(), [9 * MIN], 'the next refresh: 1 min before the new exp');
  t.clock.advance(9 * MIN);
  await flush();
  assert.equal(t.ws.last().sentOf('refresh').length, 2);
  assert.equal(claims(t.ws.last().sentOf('refresh')[1].token).n, 3);
  assert.equal(t.ws.sockets.length, 1, 'no reconnect');
});

test('the lead is at least 30 s, and at most half a short lifetime', async () => {
  const a = await connected({ lifetimeMs: 2 * MIN });
  assert.deepEqual(a.clock.pending(), [90_000], '30 s before a 2 min token expires');

  const b = await connected({ lifetimeMs: 20_000 });
  assert.deepEqual(b.clock.pending(), [10_000], 'halfway through a 20 s token');

  const c = await connected({ lifetimeMs: 60 * MIN });
  assert.deepEqual(c.clock.pending(), [54 * MIN], '6 min (10%) before a 1 h token expires');

  // Without iat the lifetime is counted from when the token was obtained.
  const d = await connected({ lifetimeMs: 10 * MIN, iat: false });
  assert.deepEqual(d.clock.pending(), [9 * MIN]);

  const e = await connected({ lifetimeMs: 10 * MIN, refreshLeadMs: 5 * MIN });
  assert.deepEqual(e.clock.pending(), [5 * MIN], 'refreshLeadMs raises the minimum lead');
});

test('after "refreshed", reconnects use the refreshed token', async () => {
  const t = await connected();
  t.clock.advance(9 * MIN);
  await flush();
  const [frame] = t.ws.last().sentOf('refresh');
  t.ws.last().receive({ type: 'refreshed', exp: claims(frame.token).exp });
  t.ws.last().serverClose(4002, 'idle');
  t.clock.advance(1000);
  await flush();
  assert.equal(t.ws.sockets.length, 2);
  assert.equal(t.ws.last().query.get('token'), frame.token);
  assert.equal(t.calls(), 2, 'the token function was not asked again');
});

test('bad_token: reconnects at once with a fresh token, before exp', async () => {
  const t = await connected();
  t.clock.advance(9 * MIN);
  await flush();
  const old = t.ws.last();
  assert.equal(old.sentOf('refresh').length, 1);
  old.receive({ type: 'error', code: 'bad_token', message: 'token sub is not this session\'s user' });
  assert.equal(t.errors.at(-1).code, 'bad_token');
  assert.equal(old.closedWith.code, 4000);
  assert.equal(t.client.state, 'reconnecting');
  t.clock.advance(0); // random() = 0: no backoff delay
  await flush();
  assert.equal(t.ws.sockets.length, 2);
  assert.equal(claims(t.ws.last().query.get('token')).n, 3, 'asked the token function again');
  assert.ok(t.clock.now < 10 * MIN, 'before the old token expired');
});

test('a bad_token that answers no refresh of ours changes nothing', async () => {
  const t = await connected();
  t.ws.last().receive({ type: 'error', code: 'bad_token', message: 'x' });
  assert.equal(t.client.state, 'open');
  assert.equal(t.ws.sockets.length, 1);
});

test('no answer to a refresh: reconnects with a fresh token after connectTimeoutMs', async () => {
  const t = await connected({ connectTimeoutMs: 5000 });
  t.clock.advance(9 * MIN);
  await flush();
  assert.equal(t.ws.last().sentOf('refresh').length, 1);
  t.clock.advance(4999);
  assert.equal(t.client.state, 'open');
  t.clock.advance(1);
  assert.equal(t.ws.last().closedWith.code, 4000);
  assert.equal(t.client.state, 'reconnecting');
});

test('topics the refreshed token no longer allows are forgotten and reported', async () => {
  const t = await connected();
  const a = t.client.subscribe('a');
  t.client.subscribe('b');
  const c = t.client.subscribe('c'); // still unanswered when the refresh drops it
  t.ws.last().receive({ type: 'subscribed', topic: 'a' });
  t.ws.last().receive({ type: 'subscribed', topic: 'b' });
  await a;
  t.clock.advance(9 * MIN);
  await flush();
  const [frame] = t.ws.last().sentOf('refresh');
  t.ws.last().receive({ type: 'refreshed', exp: claims(frame.token).exp, unsubscribed: ['a', 'c'] });
  await assert.rejects(c, (err) => err.code === 'forbidden' && err.topic === 'c');
  assert.deepEqual(t.errors.filter((e) => e.code === 'forbidden').map((e) => e.topic), ['a', 'c']);
  // A later refusal is matched to the right subscribe (c is no longer awaited).
  const d = t.client.subscribe('d');
  t.ws.last().receive({ type: 'error', code: 'forbidden', message: 'no' });
  await assert.rejects(d, (err) => err.topic === 'd');

  t.ws.last().serverClose(4002);
  t.clock.advance(1000);
  await flush();
  t.ws.last().open();
  assert.deepEqual(t.ws.last().sentOf('subscribe').map((f) => f.topic), ['b']);
});

test('a fixed token, autoRefresh: false or a token without exp never refreshes', async () => {
  const fixed = setupClient(HeraldClient, { token: fakeJwt({ exp: 600 }), pingIntervalMs: 0 });
  fixed.client.connect();
  await flush();
  fixed.ws.last().open();
  fixed.ws.last().receive({ type: 'welcome', session: 's' });
  assert.deepEqual(fixed.clock.pending(), []);

  const off = await connected({ autoRefresh: false });
  assert.deepEqual(off.clock.pending(), []);

  const opaque = setupClient(HeraldClient, { token: () => 'not-a-jwt', pingIntervalMs: 0 });
  opaque.client.connect();
  await flush();
  opaque.ws.last().open();
  opaque.ws.last().receive({ type: 'welcome', session: 's' });
  assert.deepEqual(opaque.clock.pending(), []);
});

test('the same token again is not sent; the client asks again a little later', async () => {
  let clock;
  const same = fakeJwt({ exp: (10 * MIN) / 1000, iat: 0 });
  const t = setupClient(HeraldClient, { token: () => same, pingIntervalMs: 0 });
  clock = t.clock;
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.ws.last().receive({ type: 'welcome', session: 's' });
  clock.advance(9 * MIN);
  await flush();
  assert.equal(t.ws.last().sentOf('refresh').length, 0);
  assert.deepEqual(clock.pending(), [5000]);
});

test('a failing token function during a refresh is reported and retried', async () => {
  let fail = false;
  let n = 0;
  const t = setupClient(HeraldClient, {
    pingIntervalMs: 0,
    token: async () => {
      if (fail) throw new Error('auth down');
      n++;
      return fakeJwt({ exp: (t.clock.now + 10 * MIN) / 1000, iat: t.clock.now / 1000, n });
    },
  });
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.ws.last().receive({ type: 'welcome', session: 's' });
  fail = true;
  t.clock.advance(9 * MIN);
  await flush();
  assert.equal(t.errors.at(-1).code, 'token');
  assert.equal(t.ws.last().sentOf('refresh').length, 0);
  fail = false;
  t.clock.advance(5000);
  await flush();
  assert.equal(t.ws.last().sentOf('refresh').length, 1);
  assert.equal(t.client.state, 'open');
});

test('close() cancels a planned refresh', async () => {
  const t = await connected();
  t.client.close();
  assert.deepEqual(t.clock.pending(), []);
  t.clock.advance(60 * MIN);
  await flush();
  assert.equal(t.ws.last().sentOf('refresh').length, 0);
});
