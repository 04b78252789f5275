// Frames: subscribe/resubscribe, publish, error frames and listener management.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { flush, setupClient } from '../testkit/fakes.js';

function setup(options = {}) {
  return setupClient(HeraldClient, { random: () => 0, ...options });
}

async function reconnect(t, code = 4002) {
  t.ws.last().serverClose(code);
  t.clock.advance(60_000);
  await flush();
  t.ws.last().open();
}

/** Settles a promise into a plain record so tests can assert on pending/resolved/rejected. */
function track(promise) {
  const r = { status: 'pending' };
  promise.then((v) => Object.assign(r, { status: 'resolved', value: v }),
    (e) => Object.assign(r, { status: 'rejected', error: e }));
  return r;
}

test('subscribe before connecting is sent on open and resolves on "subscribed"', async () => {
  const t = setup();
  const sub = track(t.client.subscribe('orders.store-42'));
  t.client.connect();
  await flush();
  t.ws.last().open();
  assert.deepEqual(t.ws.last().sentOf('subscribe'), [{ type: 'subscribe', topic: 'orders.store-42' }]);
  await flush();
  assert.equal(sub.status, 'pending');
  t.ws.last().receive({ type: 'subscribed', topic: 'orders.store-42' });
  await flush();
  assert.deepEqual(sub, { status: 'resolved', value: 'orders.store-42' });

  // Already confirmed: resolves without another frame.
  const again = track(t.client.subscribe('orders.store-42'));
  await flush();
  assert.equal(again.status, 'resolved');
  assert.equal(t.ws.last().sentOf('subscribe').length, 1);
});

test('remembered topics are resubscribed after a reconnect; unsubscribed ones are not', async () => {
  const t = setup();
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.client.subscribe('a');
  t.client.subscribe('b');
  t.ws.last().receive({ type: 'subscribed', topic: 'a' });
  t.ws.last().receive({ type: 'subscribed', topic: 'b' });
  t.client.unsubscribe('b');
  assert.deepEqual(t.ws.last().sentOf('unsubscribe'), [{ type: 'unsubscribe', topic: 'b' }]);

  await reconnect(t);
  assert.equal(t.ws.sockets.length, 2);
  assert.deepEqual(t.ws.last().sentOf('subscribe'), [{ type: 'subscribe', topic: 'a' }]);
  // The confirmation belongs to the old socket: a new subscribe() waits for the new reply.
  const sub = track(t.client.subscribe('a'));
  await flush();
  assert.equal(sub.status, 'pending');
  t.ws.last().receive({ type: 'subscribed', topic: 'a' });
  await flush();
  assert.equal(sub.status, 'resolved');
});

test('a refused subscribe rejects the oldest unanswered one and is not retried', async () => {
  const t = setup();
  t.client.connect();
  await flush();
  t.ws.last().open();
  const a = track(t.client.subscribe('secret'));
  const b = track(t.client.subscribe('public'));
  t.ws.last().receive({ type: 'error', code: 'forbidden', message: 'not allowed' });
  t.ws.last().receive({ type: 'subscribed', topic: 'public' });
  await flush();
  assert.equal(a.status, 'rejected');
  assert.equal(a.error.code, 'forbidden');
  assert.equal(a.error.topic, 'secret');
  assert.equal(b.status, 'resolved');
  assert.equal(t.errors.at(-1).topic, 'secret');

  await reconnect(t);
  assert.deepEqual(t.ws.last().sentOf('subscribe'), [{ type: 'subscribe', topic: 'public' }]);
});

test('other error frames are reported and leave subscriptions alone', async () => {
  const t = setup();
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.client.subscribe('a');
  t.ws.last().receive({ type: 'error', code: 'rate_limited', message: 'slow down' });
  assert.deepEqual(t.errors.at(-1), { type: 'error', code: 'rate_limited', message: 'slow down' });
  t.ws.last().receive('not json');
  assert.equal(t.errors.at(-1).code, 'protocol');
  await reconnect(t);
  assert.deepEqual(t.ws.last().sentOf('subscribe'), [{ type: 'subscribe', topic: 'a' }]);
});

test('close() rejects pending subscribes', async () => {
  const t = setup();
  t.client.connect();
  await flush();
  t.ws.last().open();
  const sub = track(t.client.subscribe('a'));
  t.client.close();
  await flush();
  assert.equal(sub.status, 'rejected');
});

test('publish sends a publish frame when open and returns false otherwise', async () => {
  const t = setup();
  assert.equal(t.client.publish('printed', { id: 'm1' }), false);
  t.client.connect();
  await flush();
  assert.equal(t.client.publish('printed', { id: 'm1' }), false, 'still connecting');
  t.ws.last().open();
  assert.equal(t.client.publish('printed', { id: 'm1' }), true);
  assert.deepEqual(t.ws.last().sentOf('publish'), [{ type: 'publish', event: 'printed', data: { id: 'm1' } }]);
});

test('on() returns a function that removes the listener', async () => {
  const t = setup();
  const seen = [];
  const off = t.client.on('message', (m) => seen.push(m.id));
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.ws.last().receive({ type: 'message', id: 'm1', cursor: 'c1', source: 'user', data: 'hi' });
  off();
  t.ws.last().receive({ type: 'message', id: 'm2', cursor: 'c2', source: 'user', data: 'hi' });
  assert.deepEqual(seen, ['m1']);
  assert.equal(t.client.cursor, 'c2', 'cursor still tracked without listeners');
});
