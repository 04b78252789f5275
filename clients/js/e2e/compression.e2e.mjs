// End-to-end: herald with --compression and headless Chromium. The browser offers
// permessage-deflate; herald accepts it without context takeover; a 2 KB order reaches the
// demo console compressed and is printed exactly once. Run: node --test
// e2e/compression.e2e.mjs (see run.sh).
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  ARTIFACTS, HERALD_BIN as BIN, stepper, freePort, launchChromium, spawnLogged,
  stopProcess, waitFor200, publish, waitForState, printedRow,
} from './harness.mjs';

const HERALD_LOG = path.join(ARTIFACTS, 'herald-e2e-compression.log');
const USER = 'merchant7';
const UI_TIMEOUT = 15_000;

let herald;
let browser;
let page;
let log;
let base;
const step = stepper();

describe('permessage-deflate with Chromium', { timeout: 120_000 }, () => {
  before(async () => {
    assert.ok(existsSync(BIN), `herald binary not found at ${BIN}`);
    mkdirSync(ARTIFACTS, { recursive: true });
    log = createWriteStream(HERALD_LOG);
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    herald = spawnLogged(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--compression'], { log });
    await waitFor200(`${base}/readyz`, { proc: herald, timeoutMs: 20_000, logFile: HERALD_LOG, name: 'herald' });
    browser = await launchChromium();
    page = await browser.newPage();
    page.setDefaultTimeout(UI_TIMEOUT);
  });

  after(async () => {
    if (herald) await stopProcess(herald, 30_000, 'herald').catch(() => herald.kill('SIGKILL'));
    await browser?.close().catch(() => {});
    log?.end();
  });

  step('Chromium negotiates permessage-deflate with herald', async () => {
    await page.goto(`${base}/demo/?user=${USER}`);
    const extensions = await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => { resolve(ws.extensions); ws.close(); };
      ws.onerror = () => reject(new Error('the WebSocket failed'));
    }), `${base.replace('http', 'ws')}/websocket/probe`);
    assert.match(extensions, /permessage-deflate/);
    assert.match(extensions, /server_no_context_takeover/);
    assert.match(extensions, /client_no_context_takeover/);
  });

  step('a 2 KB order reaches the console compressed and is printed once', async () => {
    await waitForState(page, 'open', UI_TIMEOUT);
    const lines = Array.from({ length: 60 }, (_, i) => ({ sku: `SKU-${i}`, qty: 1, note: 'extra sauce' }));
    const data = { id: 'Z-2048', item: 'Family feast', lines };
    assert.ok(JSON.stringify(data).length >= 2000, 'the order is at least 2 KB');
    await publish(base, { user: USER, event: 'order', data });
    const row = await printedRow(page, 'Z-2048', UI_TIMEOUT);
    assert.match(await row.textContent(), /Family feast/);
  });
});
