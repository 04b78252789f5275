// Test doubles for the unit tests: a scriptable WebSocket and a manual clock.
// Kept outside test/ so `node --test test/` does not run this file as a test.

/** Returns a fresh fake WebSocket class and the list of sockets it created. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0; // CONNECTING
      this.sent = [];      // parsed frames the client sent
      this.closedWith = null;
      sockets.push(this);
    }
    get query() { return new URL(this.url).searchParams; }
    send(text) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) { this.closedWith = { code, reason }; this.readyState = 2; }
    // --- driven by the tests, standing in for the server ---
    open() { this.readyState = 1; this.onopen?.({}); }
    receive(frame) { this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) }); }
    serverClose(code, reason = '') { this.readyState = 3; this.onclose?.({ code, reason, wasClean: code !== 1006 }); }
    fail() { this.readyState = 3; this.onerror?.({}); this.onclose?.({ code: 1006, reason: '', wasClean: false }); }
    sentOf(type) { return this.sent.filter((f) => f.type === type); }
  }
  return { FakeWebSocket, sockets, last: () => sockets[sockets.length - 1] };
}

/** A manual clock: timers fire only when the test advances time. */
export function fakeClock() {
  let now = 0;
  let seq = 0;
  const timers = new Map();
  return {
    setTimeout(fn, ms) { const id = ++seq; timers.set(id, { at: now + ms, fn }); return id; },
    clearTimeout(id) { timers.delete(id); },
    /** Delays (from now) of the pending timers, ascending. */
    pending() { return [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b); },
    /** Move time forward, firing due timers in order (including ones they schedule). */
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let next = null;
        for (const [id, t] of timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
        if (!next) break;
        timers.delete(next[0]);
        now = next[1].at;
        next[1].fn();
      }
      now = end;
    },
    get now() { return now; },
  };
}

/**
 * An in-memory Web Storage stand-in. `fail` makes getItem/setItem throw (as a disabled or
 * full localStorage does); `log` records every call as [method, key, value?].
 */
export function memoryStorage(entries = {}) {
  const map = new Map(Object.entries(entries));
  const storage = {
    fail: false,
    log: [],
    getItem(key) {
      storage.log.push(['getItem', key]);
      if (storage.fail) throw new Error('SecurityError: storage is disabled');
      return map.has(key) ? map.get(key) : null;
    },
    setItem(key, value) {
      storage.log.push(['setItem', key, value]);
      if (storage.fail) throw new Error('QuotaExceededError: storage is full');
      map.set(key, String(value));
    },
    removeItem(key) { map.delete(key); },
    /** Direct look at the contents, not logged and never throwing. */
    peek(key) { return map.has(key) ? map.get(key) : null; },
  };
  return storage;
}

/** An unsigned JWT-shaped token with these claims (the client only reads exp and iat). */
export function fakeJwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.sig`;
}

/** Let pending promise callbacks (e.g. an awaited token) run; not a time-based sleep. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A client wired to a fake WebSocket and a fake clock, recording `state` and `error`
 * events. `options` override the defaults (e.g. `random`). No cursor storage unless the
 * test passes `cursorStorage` (a global localStorage, as in newer Node, must not leak
 * cursors from one test into the next); `cursorStorage: undefined` selects the default.
 */
export function setupClient(HeraldClient, options = {}) {
  const ws = fakeWebSocket();
  const clock = fakeClock();
  const client = new HeraldClient({
    url: 'ws://hub.test:8080',
    user: 'merchant1',
    WebSocket: ws.FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: () => clock.now,
    random: () => 0.5,
    document: null,
    cursorStorage: false,
    ...options,
  });
  const states = [];
  const errors = [];
  client.on('state', (state, info) => states.push({ state, ...info }));
  client.on('error', (err) => errors.push(err));
  return { client, ws, clock, states, errors };
}
