// The resume cursor across page loads: kept in (local)storage per user, sent as since=.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { flush, memoryStorage, setupClient } from '../testkit/fakes.js';

const KEY = 'herald.cursor.merchant1'; // setupClient's user

function message(id, cursor, extra = {}) {
  return { type: 'message', id, cursor, source: 'user', event: 'order', data: { id }, ...extra };
}

/** A client on `storage`, connected (socket opened). */
async function connected(options = {}) {
  const t = setupClient(HeraldClient, options);
  t.client.connect();
  await flush();
  t.ws.last().open();
  return t;
}

/** The since= of the first socket a fresh client on these options opens. */
async function firstSince(options) {
  const { ws } = await connected(options);
  return ws.last().query.get('since');
}

/** Runs fn with globalThis.localStorage defined by `descriptor`, then restores it. */
async function withGlobalLocalStorage(descriptor, fn) {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'localStorage');
  Object.defineProperty(globalThis, 'localStorage', { configurable: true, ...descriptor });
  try {
    return await fn();
  } finally {
    if (saved) Object.defineProperty(globalThis, 'localStorage', saved);
    else delete globalThis.localStorage;
  }
}

test('the cursor is stored after a message, once its handler has run', async () => {
  const storage = memoryStorage();
  const { client, ws } = await connected({ cursorStorage: storage });
  const duringHandler = [];
  client.on('message', (m) => duringHandler.push({ id: m.id, stored: storage.peek(KEY), cursor: client.cursor }));
  ws.last().receive(message('m1', 'c1'));
  ws.last().receive(message('m2', 'c2'));
  assert.deepEqual(duringHandler, [
    { id: 'm1', stored: null, cursor: undefined },
    { id: 'm2', stored: 'c1', cursor: 'c1' },
  ]);
  assert.equal(storage.peek(KEY), 'c2');
  assert.equal(client.cursor, 'c2');
});

test('a throwing handler still moves the cursor: the message was delivered', async () => {
  const storage = memoryStorage();
  const { client, ws } = await connected({ cursorStorage: storage });
  client.on('message', () => { throw new Error('app bug'); });
  // The client rethrows a listener's error in a microtask; catch it there instead.
  const rethrown = [];
  const saved = globalThis.queueMicrotask;
  globalThis.queueMicrotask = (fn) => { try { fn(); } catch (err) { rethrown.push(err.message); } };
  try {
    ws.last().receive(message('m1', 'c1'));
  } finally {
    globalThis.queueMicrotask = saved;
  }
  assert.deepEqual(rethrown, ['app bug']);
  assert.equal(storage.peek(KEY), 'c1');
});

test('the next client on the same storage resumes with since= the stored cursor', async () => {
  const storage = memoryStorage();
  const first = await connected({ cursorStorage: storage });
  assert.equal(first.ws.last().query.has('since'), false, 'nothing stored yet');
  first.ws.last().receive(message('m1', 'c1'));
  first.ws.last().receive(message('m2', 'c2'));
  first.client.close(); // the page goes away

  const second = await connected({ cursorStorage: storage });
  assert.equal(second.ws.last().query.get('since'), 'c2');
  assert.equal(second.client.cursor, 'c2');
  // And it keeps moving: a reconnect of the second page resumes after what it was sent.
  second.ws.last().receive(message('m3', 'c3'));
  second.ws.last().serverClose(1006);
  second.clock.advance(60_000);
  await flush();
  assert.equal(second.ws.last().query.get('since'), 'c3');
  assert.equal(storage.peek(KEY), 'c3');
});

test('the cursor in memory wins over the stored one; the stored one is read while none is', async () => {
  const storage = memoryStorage({ [KEY]: 'stored-1' });
  assert.equal(await firstSince({ cursorStorage: storage, cursor: 'given-9' }), 'given-9');

  // Another tab stores a newer cursor after this client was built: the connect reads it.
  const late = memoryStorage();
  const t = setupClient(HeraldClient, { cursorStorage: late });
  late.setItem(KEY, 'from-other-tab');
  t.client.connect();
  await flush();
  assert.equal(t.ws.last().query.get('since'), 'from-other-tab');
});

test('cursors are kept per user', async () => {
  const storage = memoryStorage();
  const a = await connected({ cursorStorage: storage, user: 'alice' });
  const b = await connected({ cursorStorage: storage, user: 'bob' });
  a.ws.last().receive(message('a1', 'ca1'));
  b.ws.last().receive(message('b1', 'cb1'));
  a.ws.last().receive(message('a2', 'ca2'));
  assert.equal(storage.peek('herald.cursor.alice'), 'ca2');
  assert.equal(storage.peek('herald.cursor.bob'), 'cb1');

  assert.equal(await firstSince({ cursorStorage: storage, user: 'bob' }), 'cb1');
  assert.equal(await firstSince({ cursorStorage: storage, user: 'alice' }), 'ca2');
  assert.equal(await firstSince({ cursorStorage: storage, user: 'carol' }), null);
});

test('cursorKey changes where the cursor is kept', async () => {
  const storage = memoryStorage({ 'shop/cursor': 'k7' });
  const { ws } = await connected({ cursorStorage: storage, cursorKey: 'shop/cursor' });
  assert.equal(ws.last().query.get('since'), 'k7');
  ws.last().receive(message('m8', 'k8'));
  assert.equal(storage.peek('shop/cursor'), 'k8');
  assert.equal(storage.peek(KEY), null);
});

test('broadcast and topic cursors are not kept (the hub keeps only user messages)', async () => {
  const storage = memoryStorage();
  const { client, ws, clock } = await connected({ cursorStorage: storage });
  const seen = [];
  client.on('message', (m) => seen.push(m.id));
  ws.last().receive(message('u1', 'cu1'));
  ws.last().receive(message('b1', 'cb1', { source: 'broadcast' }));
  ws.last().receive(message('t1', 'ct1', { source: 'topic', topic: 'orders.store-42' }));
  ws.last().receive({ type: 'message', id: 'nocursor', source: 'user', data: null });
  ws.last().receive(message('empty', ''));
  assert.deepEqual(seen, ['u1', 'b1', 't1', 'nocursor', 'empty'], 'all are delivered');
  assert.equal(client.cursor, 'cu1');
  assert.equal(storage.peek(KEY), 'cu1');
  ws.last().serverClose(1006);
  clock.advance(60_000);
  await flush();
  assert.equal(ws.last().query.get('since'), 'cu1');
});

test('a throwing storage is harmless: messages flow, the cursor lives in memory', async () => {
  const storage = memoryStorage({ [KEY]: 'unreachable' });
  storage.fail = true;
  const { client, ws, clock, errors } = await connected({ cursorStorage: storage });
  assert.equal(ws.last().query.has('since'), false);
  const seen = [];
  client.on('message', (m) => seen.push(m.id));
  ws.last().receive(message('m1', 'c1'));
  ws.last().receive(message('m2', 'c2'));
  assert.deepEqual(seen, ['m1', 'm2']);
  assert.ok(storage.log.some(([op]) => op === 'setItem'), 'it tried to store');
  assert.equal(client.state, 'open');
  ws.last().serverClose(1006);
  clock.advance(60_000);
  await flush();
  assert.equal(ws.last().query.get('since'), 'c2', 'resume from memory');
  assert.deepEqual(errors.filter((e) => e.code !== 'transport'), [], 'no error reported for storage');
});

test('a stored value that is not a usable cursor is ignored', async () => {
  for (const bad of [null, '', 42, {}]) {
    const storage = { getItem: () => bad, setItem() {} };
    assert.equal(await firstSince({ cursorStorage: storage }), null, `stored ${JSON.stringify(bad)}`);
  }
});

test('by default the global localStorage is used', async () => {
  const storage = memoryStorage({ [KEY]: 'from-local-storage' });
  await withGlobalLocalStorage({ value: storage }, async () => {
    const { ws } = await connected({ cursorStorage: undefined });
    assert.equal(ws.last().query.get('since'), 'from-local-storage');
    ws.last().receive(message('m1', 'c1'));
    assert.equal(storage.peek(KEY), 'c1');
  });
});

test('a localStorage whose getter throws (storage denied) means no storage, not a crash', async () => {
  await withGlobalLocalStorage({ get() { throw new Error('SecurityError: access denied'); } }, async () => {
    const { client, ws } = await connected({ cursorStorage: undefined });
    ws.last().receive(message('m1', 'c1'));
    assert.equal(client.cursor, 'c1');
  });
  // No localStorage at all (Node 20, workers): fine too.
  await withGlobalLocalStorage({ value: undefined }, async () => {
    const { ws } = await connected({ cursorStorage: undefined });
    assert.equal(ws.last().query.has('since'), false);
  });
});

test('cursorStorage: false (or null) opts out: storage is never touched', async () => {
  for (const off of [false, null]) {
    const storage = memoryStorage({ [KEY]: 'stored' });
    await withGlobalLocalStorage({ value: storage }, async () => {
      const { client, ws, clock } = await connected({ cursorStorage: off });
      assert.equal(ws.last().query.has('since'), false);
      ws.last().receive(message('m1', 'c1'));
      assert.equal(client.cursor, 'c1', 'kept in memory');
      ws.last().serverClose(1006);
      clock.advance(60_000);
      await flush();
      assert.equal(ws.last().query.get('since'), 'c1');
    });
    assert.deepEqual(storage.log, [], `cursorStorage: ${off}`);
    assert.equal(storage.peek(KEY), 'stored');
  }
});

test('a cursorStorage without getItem/setItem is refused at construction', () => {
  for (const bad of [{}, 'localStorage', { getItem() {} }]) {
    assert.throws(() => new HeraldClient({ url: 'ws://x', user: 'u', WebSocket: class {}, cursorStorage: bad }),
      /cursorStorage/);
  }
});
