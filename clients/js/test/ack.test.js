// Delivery receipts: message.ack(status), client.ack(id, status) and autoAck.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { flush, setupClient } from '../testkit/fakes.js';

async function openClient(options = {}) {
  const t = setupClient(HeraldClient, { random: () => 0, ...options });
  t.client.connect();
  await flush();
  t.ws.last().open();
  t.ws.last().receive({ type: 'welcome', session: 's1', user: 'u1', pod: 'p', heartbeat_ms: 25000 });
  return t;
}

const order = { type: 'message', id: 'A-1', cursor: 'e-1', source: 'user', event: 'order', data: { id: 'A-1' } };

test('message.ack sends an ack frame with the status, received by default', async () => {
  const t = await openClient();
  const got = [];
  t.client.on('message', (m) => got.push(m));
  t.ws.last().receive({ ...order });
  assert.equal(got.length, 1);
  assert.equal(got[0].ack('printed'), true);
  assert.equal(got[0].ack(), true);
  assert.deepEqual(t.ws.last().sentOf('ack'), [
    { type: 'ack', id: 'A-1', status: 'printed' },
    { type: 'ack', id: 'A-1', status: 'received' },
  ]);
  assert.equal(JSON.stringify(got[0]).includes('ack'), false, 'ack is not enumerable');
  assert.equal(t.client.ack('B-2', 'shown'), true);
  assert.deepEqual(t.ws.last().sentOf('ack').at(-1), { type: 'ack', id: 'B-2', status: 'shown' });
});

test('autoAck acknowledges user messages after the handlers, not broadcasts', async () => {
  const t = await openClient({ autoAck: true });
  const order_of_events = [];
  t.client.on('message', () => order_of_events.push(t.ws.last().sentOf('ack').length));
  t.ws.last().receive({ ...order });
  t.ws.last().receive({ type: 'message', id: 'b1', cursor: 'b1', source: 'broadcast', data: 1 });
  assert.deepEqual(t.ws.last().sentOf('ack'), [{ type: 'ack', id: 'A-1', status: 'received' }]);
  assert.deepEqual(order_of_events, [0, 1], 'the ack follows the handler');
});

test('without autoAck nothing is acknowledged, and acks are not queued while closed', async () => {
  const t = await openClient();
  const got = [];
  t.client.on('message', (m) => got.push(m));
  t.ws.last().receive({ ...order });
  assert.deepEqual(t.ws.last().sentOf('ack'), []);
  t.ws.last().serverClose(4002);
  await flush();
  assert.equal(got[0].ack('printed'), false);
});
