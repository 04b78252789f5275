// Shared pieces of the end-to-end tests: ports, child processes (herald, nats-server), the
// system Chromium, HTTP helpers. Not a test file itself (run.sh names the *.e2e.mjs files).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const ARTIFACTS = path.join(ROOT, 'artifacts');
/** HERALD_BIN (relative paths resolve from the repo root), default target/debug/herald. */
export const HERALD_BIN = path.resolve(ROOT, process.env.HERALD_BIN || 'target/debug/herald');

/**
 * Steps of one scenario depend on each other: after a failure the rest are skipped quickly
 * instead of each waiting out its own timeout.
 */
export function stepper() {
  let broken = false;
  return function step(name, fn) {
    it(name, async (t) => {
      if (broken) return t.skip('an earlier step failed');
      try { await fn(); } catch (err) { broken = true; throw err; }
    });
  };
}

export async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
}

/**
 * Spawns `bin args`, its stdout and stderr appended to the `log` stream. The returned
 * ChildProcess has `exited`: a promise of {code, signal}.
 */
export function spawnLogged(bin, args, { log, env = {} }) {
  log.write(`\n=== start ${bin} ${args.join(' ')}\n`);
  const proc = spawn(bin, args, { env: { ...env, ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  proc.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  // A binary that cannot be started at all must fail the wait, not crash the runner.
  proc.once('error', (err) => log.write(`=== ${bin}: ${err.message}\n`));
  return proc;
}

export const hasExited = (proc) => proc.exitCode !== null || proc.signalCode !== null;

/** SIGTERM, then SIGKILL if it is still running after `timeoutMs`; throws in that case. */
export async function stopProcess(proc, timeoutMs, name = 'process') {
  if (!proc || hasExited(proc)) return;
  proc.kill('SIGTERM');
  const result = await Promise.race([proc.exited, delay(timeoutMs).then(() => null)]);
  if (!result) {
    proc.kill('SIGKILL');
    await Promise.race([proc.exited, delay(5000)]);
    throw new Error(`${name} did not exit within ${timeoutMs} ms of SIGTERM`);
  }
}

/** The last lines of a log file, to put into an error message. */
export async function logTail(file, lines = 15) {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Polls GET url until it answers 200; fails early if `proc` exits. */
export async function waitFor200(url, { proc, timeoutMs, logFile, name = 'process' }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc && hasExited(proc)) {
      throw new Error(`${name} exited (code ${proc.exitCode}, signal ${proc.signalCode}) before ` +
        `${url} answered 200; end of ${logFile}:\n${await logTail(logFile)}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      proc?.kill('SIGKILL');
      throw new Error(`GET ${url} was not 200 within ${timeoutMs} ms; end of ${logFile}:\n${await logTail(logFile)}`);
    }
    await delay(100); // poll interval
  }
}

/** POST /api/v1/publish (open on loopback without an API key); returns the 202 body. */
export async function publish(base, body) {
  const res = await fetch(`${base}/api/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  assert.equal(res.status, 202, `POST /api/v1/publish: ${res.status} ${text}`);
  const reply = JSON.parse(text);
  assert.equal(typeof reply.id, 'string', `publish reply carries an id: ${text}`);
  return reply;
}

/** Polls `check` (async, truthy when done) every 100 ms; throws `message()` after timeoutMs. */
export async function until(check, timeoutMs, message) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(typeof message === 'function' ? await message() : message);
    await delay(100);
  }
}

/** The nats-server binary: HERALD_TEST_NATS_SERVER, else /usr/sbin/nats-server, else PATH. */
export function natsServerBin() {
  const fromEnv = process.env.HERALD_TEST_NATS_SERVER;
  if (fromEnv) return path.resolve(ROOT, fromEnv);
  if (existsSync('/usr/sbin/nats-server')) return '/usr/sbin/nats-server';
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (dir && existsSync(path.join(dir, 'nats-server'))) return path.join(dir, 'nats-server');
  }
  return null;
}

/**
 * Waits until a NATS server on 127.0.0.1:port greets with its INFO line; returns the parsed
 * INFO (so callers can check e.g. `jetstream`).
 */
export async function waitForNats(port, { proc, timeoutMs, logFile }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (hasExited(proc)) {
      throw new Error(`nats-server exited (code ${proc.exitCode}) before it listened; end of ${logFile}:\n${await logTail(logFile)}`);
    }
    const info = await natsInfo(port).catch(() => null);
    if (info) return info;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`nats-server was not listening on ${port} within ${timeoutMs} ms; end of ${logFile}:\n${await logTail(logFile)}`);
    }
    await delay(100);
  }
}

function natsInfo(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (err, value) => { sock.destroy(); if (err) reject(err); else resolve(value); };
    sock.setTimeout(1000, () => done(new Error('no INFO within 1 s')));
    sock.on('error', done);
    sock.on('data', (chunk) => {
      buf += chunk;
      const nl = buf.indexOf('\r\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      if (!line.startsWith('INFO ')) return done(new Error(`unexpected greeting: ${line}`));
      try { done(null, JSON.parse(line.slice(5))); } catch (err) { done(err); }
    });
  });
}

// The demo console's page, as the browser tests read it.

/** The connection state the page shows. */
export const stateText = (page) => page.locator('[data-testid="state"]').textContent();

/** Waits until the page shows `state`; on timeout, says what it shows and its log. */
export async function waitForState(page, state, timeout) {
  try {
    await page.waitForFunction((s) => document.querySelector('[data-testid="state"]')?.textContent === s,
      state, { timeout });
  } catch (err) {
    const logLines = await page.locator('[data-testid="log"]').innerText().catch(() => '?');
    throw new Error(`state is "${await stateText(page)}", not "${state}", after ${timeout} ms; page log:\n${logLines}`, { cause: err });
  }
}

/** The titles of the order rows shown, in order. */
export const orderTitles = (page) => page.locator('[data-testid="order"] .order-id').allTextContents();

/** The order row whose title is exactly #<orderId> (printed ones only when `printed`). */
export function rowOf(page, orderId, printed) {
  const sel = printed ? '[data-testid="order"][data-printed="true"]' : '[data-testid="order"]';
  return page.locator(sel).filter({ has: page.locator('.order-id', { hasText: new RegExp(`^#${orderId}$`) }) });
}

/**
 * Waits (at most `timeout` ms) until the order is shown and acknowledged ("printed": the
 * demo's ack was sent); asserts there is exactly one row of it, and returns that row.
 */
export async function printedRow(page, orderId, timeout) {
  try {
    await rowOf(page, orderId, true).waitFor({ timeout });
  } catch (err) {
    const logLines = await page.locator('[data-testid="log"]').innerText().catch(() => '?');
    throw new Error(`order ${orderId} was not printed within ${timeout} ms; shown: ` +
      `${JSON.stringify(await orderTitles(page).catch(() => '?'))}; page log:\n${logLines}`, { cause: err });
  }
  assert.equal(await rowOf(page, orderId).count(), 1, `one row for ${orderId}`);
  return rowOf(page, orderId, true);
}
