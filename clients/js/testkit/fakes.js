// Test doubles for the unit tests: a scriptable WebSocket, EventSource and fetch, and a
// manual clock.
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

/**
 * Returns a fresh fake EventSource class and the list of streams it created. A test plays
 * the server: `welcome()`, `frame()` (one SSE event per herald frame, the event name being
 * the frame type), `serverClose()` (an `event: close`, then the end of the stream),
 * `drop()` (the stream ends without a close event) and `refuse()` (an HTTP status other
 * than 200 before the stream starts: the EventSource is CLOSED). A closed stream fires
 * nothing more, as in a browser.
 */
export function fakeEventSource() {
  const streams = [];
  class FakeEventSource {
    constructor(url, init) {
      this.url = url;
      this.withCredentials = !!init?.withCredentials;
      this.readyState = 0; // CONNECTING
      this.closed = false; // close() was called (by the client)
      this.listeners = new Map();
      streams.push(this);
    }
    get query() { return new URL(this.url).searchParams; }
    get path() { return new URL(this.url).pathname; }
    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
    }
    removeEventListener(type, fn) { this.listeners.get(type)?.delete(fn); }
    close() { this.readyState = 2; this.closed = true; }
    // --- driven by the tests, standing in for the server ---
    dispatch(ev) {
      if (this.closed) return;
      for (const fn of [...(this.listeners.get(ev.type) || [])]) fn(ev);
    }
    /** The response headers arrived (200, text/event-stream). */
    open() { if (this.closed) return; this.readyState = 1; this.dispatch({ type: 'open' }); }
    /** One SSE event: `event: <name>` (default the frame's type), `data: <JSON>`, `id:`. */
    frame(frame, { event, id } = {}) {
      const data = typeof frame === 'string' ? frame : JSON.stringify(frame);
      this.dispatch({ type: event ?? frame.type, data, lastEventId: id ?? '' });
    }
    /** Opens the stream if needed and sends the welcome frame with this session id. */
    welcome(session = 'sse-1', extra = {}) {
      if (this.readyState === 0) this.open();
      this.frame({ type: 'welcome', session, user: 'merchant1', pod: 'p1', heartbeat_ms: 25000, ...extra });
    }
    /** A message event, carrying its cursor as the SSE id as herald does. */
    message(msg) { this.frame({ type: 'message', source: 'user', ...msg }, { id: msg.cursor }); }
    /** `event: close` with the close code, then the stream ends. */
    serverClose(code, reason = '') {
      this.frame({ code, reason }, { event: 'close' });
      this.drop();
    }
    /** The stream ends (or the network drops it): a browser fires error and reconnects. */
    drop() {
      if (this.closed) return;
      this.readyState = 0;
      this.dispatch({ type: 'error' });
    }
    /** Refused before the stream started (401, 429, 503, ...): error, and CLOSED for good. */
    refuse() {
      if (this.closed) return;
      this.readyState = 2;
      this.dispatch({ type: 'error' });
      this.closed = true;
    }
  }
  return { FakeEventSource, streams, last: () => streams[streams.length - 1] };
}

/**
 * A fake fetch recording each request as {url, path, query, method, headers, body (parsed),
 * init}. Requests are answered at once with the next entry of `replies` (a status, an
 * Error to reject with, or {status, body}), 202 when it is empty; with `manual = true` they
 * wait for the test to call `request.respond(status, body)` or `request.fail(err)`.
 */
export function fakeFetch() {
  const http = {
    requests: [],
    replies: [],
    manual: false,
    last: () => http.requests[http.requests.length - 1],
    /** Parsed bodies of the requests so far, optionally only those of one frame type. */
    bodies: (type) => http.requests.map((r) => r.body).filter((b) => !type || b?.type === type),
    fetch(url, init = {}) {
      const u = new URL(url);
      let body;
      try { body = JSON.parse(init.body); } catch { body = init.body; }
      const req = { url, path: u.pathname, query: u.searchParams, method: init.method, headers: init.headers || {}, body, init };
      http.requests.push(req);
      return new Promise((resolve, reject) => {
        req.respond = (status = 202, text = '') => resolve({
          status, ok: status >= 200 && status < 300, text: async () => text,
        });
        req.fail = (err = new TypeError('fetch failed')) => reject(err);
        init.signal?.addEventListener('abort', () => reject(new DOMException('This operation was aborted', 'AbortError')));
        if (http.manual) return;
        const reply = http.replies.length ? http.replies.shift() : 202;
        if (typeof reply === 'number') req.respond(reply);
        else if (reply instanceof Error) req.fail(reply);
        else req.respond(reply.status, reply.body);
      });
    },
  };
  return http;
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
    EventSource: null, // no SSE fallback unless a test asks for it, whatever the globals are
    ...options,
  });
  const states = [];
  const errors = [];
  client.on('state', (state, info) => states.push({ state, ...info }));
  client.on('error', (err) => errors.push(err));
  return { client, ws, clock, states, errors };
}

/**
 * Like setupClient, with a fake EventSource (`es`) and fetch (`http`) too, and an http://
 * base URL. `options.WebSocket: null` leaves no WebSocket at all.
 */
export function setupSseClient(HeraldClient, options = {}) {
  const es = fakeEventSource();
  const http = fakeFetch();
  const t = setupClient(HeraldClient, {
    url: 'http://hub.test:8080',
    EventSource: es.FakeEventSource,
    fetch: http.fetch,
    ...options,
  });
  return { ...t, es, http };
}
