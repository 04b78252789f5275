// Herald demo: a merchant's order screen.
// ?user=<id> (default "demo"), optional ?token=<jwt> and ?device=<id>.
// Orders sent to the user appear as rows and, once printed, are acknowledged with a
// delivery receipt (message.ack("printed"), which a service can wait for) and upstream
// with publish("printed", {id}); broadcasts show in the banner. All text goes through
// textContent, never innerHTML: message data is untrusted.
// The client keeps the last cursor in localStorage, so a reload resumes with since= and a
// durable hub replays the orders sent meanwhile; each order is printed once per page.
import { HeraldClient } from './herald.js';

const params = new URLSearchParams(location.search);
const user = params.get('user') || 'demo';
const token = params.get('token') || undefined;
const device = params.get('device') || undefined;

const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);
const badge = byTestId('state');
const banner = byTestId('banner');
const orders = byTestId('orders');
const log = byTestId('log');
const bannerText = document.getElementById('banner-text');
const count = document.getElementById('count');
const empty = document.getElementById('empty');

document.getElementById('user').textContent = user;
document.getElementById('example').textContent =
  `curl -X POST ${location.origin}/api/v1/publish -H 'Content-Type: application/json' \\\n` +
  `  -d '{"user":"${user}","event":"order","data":{"id":"A-1001","item":"Noodles","total":12.5}}'`;

// location.origin is http(s)://host; the client maps it to ws(s)://host.
const client = new HeraldClient({ url: location.origin, user, token, device });

// Acks that could not be sent (connection down) wait here until the next "open".
const unacked = new Map(); // message id -> row
// Every message id and cursor printed by this page: a message delivered again (a replay
// overlapping what this page already got, a redelivery) must not print a second time.
const seen = new Set();

client.on('state', (state, info) => {
  badge.textContent = state;
  badge.dataset.state = state;
  const why = info.code ? ` (code ${info.code}${info.reason ? `: ${info.reason}` : ''})` : '';
  const when = state === 'reconnecting' ? `, retry in ${(info.delayMs / 1000).toFixed(1)} s` : '';
  note(`${state}${why}${when}`);
  if (state === 'open') for (const [id, row] of unacked) ack(id, row);
});

client.on('welcome', (w) => {
  document.getElementById('session').textContent = `· pod ${w.pod} · session ${w.session}`;
  note(`welcome from pod ${w.pod}`);
  // Only a connect with since= says whether it could resume.
  if (w.recovered === true) note(`resumed: ${w.replayed ?? 0} missed message(s) replayed`);
  else if (w.recovered === false) note('could not resume: orders sent while away may be missing');
});

client.on('error', (e) => note(`error ${e.code}: ${e.message}`));

client.on('message', (m) => {
  if (m.source === 'broadcast') showBanner(m.data);
  else if (m.source === 'user') addOrder(m);
});

client.connect();

function showBanner(data) {
  bannerText.textContent = typeof data === 'string' ? data
    : typeof data?.text === 'string' ? data.text
    : JSON.stringify(data);
  banner.hidden = false;
}

function addOrder(m) {
  const keys = [`id:${m.id}`];
  if (m.cursor) keys.push(`cursor:${m.cursor}`);
  if (keys.some((k) => seen.has(k))) return;
  for (const k of keys) seen.add(k);
  const data = m.data;
  const fields = data && typeof data === 'object' ? data : {};

  const row = el('li', 'order');
  row.dataset.testid = 'order';
  row.dataset.id = m.id;
  if (m.cursor) row.dataset.cursor = m.cursor;
  row.dataset.printed = 'false';

  const title = el('div', 'order-title');
  title.append(el('span', 'order-id', `#${orderNumber(fields) ?? m.id}`));
  if (fields.item != null) title.append(el('span', 'order-item', String(fields.item)));
  if (typeof fields.total === 'number') title.append(el('span', 'order-total', fields.total.toFixed(2)));
  else if (fields.total != null) title.append(el('span', 'order-total', String(fields.total)));

  const time = new Date().toLocaleTimeString();
  const meta = el('div', 'order-meta', `${m.event || 'message'} · ${time} · message ${m.id}`);
  const status = el('span', 'status', 'printing…');
  const json = el('pre', 'order-data', JSON.stringify(data));

  row.append(title, status, meta, json);
  orders.prepend(row); // newest first
  count.textContent = String(orders.children.length);
  empty.hidden = true;
  ack(m.id, row);
}

// The order's own number from the payload: data.id, data.order or data.number, if one is a
// plain string or number; otherwise the caller falls back to the message id.
function orderNumber(fields) {
  for (const name of ['id', 'order', 'number']) {
    const v = fields[name];
    if ((typeof v === 'string' && v !== '') || (typeof v === 'number' && Number.isFinite(v))) return String(v);
  }
  return undefined;
}

// Tell the services, through the hub, that this screen printed the order: a receipt
// (services waiting on the publish hear it) and the upstream event.
function ack(id, row) {
  if (client.ack(id, 'printed') && client.publish('printed', { id })) {
    unacked.delete(id);
    row.dataset.printed = 'true';
    row.querySelector('.status').textContent = 'printed';
    showReceipt(row, 'printed');
  } else {
    unacked.set(id, row);
  }
}

// The receipts this screen sent for an order, as the hub published them.
function showReceipt(row, status) {
  let line = row.querySelector('.receipts');
  if (!line) {
    line = el('div', 'receipts');
    line.dataset.testid = 'receipts';
    row.append(line);
  }
  const sent = (line.dataset.statuses ? line.dataset.statuses.split(' ') : []).concat(status);
  line.dataset.statuses = sent.join(' ');
  line.textContent = `receipts: ${sent.join(', ')}`;
}

function note(text) {
  const line = el('li', '', `${new Date().toLocaleTimeString()}  ${text}`);
  log.prepend(line);
  while (log.children.length > 8) log.lastElementChild.remove();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}
