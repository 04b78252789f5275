// Herald client: a single dependency-free ES module for browsers and Node 20+.
// The server embeds this exact file (the demo loads it from /demo/herald.js), so it
// must stay one file with no imports. Wire format: docs/protocol.md, section 1.
// Transports: a WebSocket, or Server-Sent Events (an EventSource for the server's frames,
// one fetch POST per client frame) when WebSocket is missing or keeps failing to open.

// Close codes after which reconnecting cannot help: normal close, a policy or size
// violation (the same frames would be refused again), a newer session took over this
// device (reconnecting would steal it back in a loop), or an operator disconnect.
const NO_RECONNECT = new Set([1000, 1008, 1009, 4001, 4004, 4009]);
// After 1013 (the pod admits connections slower than they arrive) the next try waits at
// least TRY_LATER_MIN_MS plus a random share of a window of TRY_LATER_WINDOW_MS or more.
const TRY_LATER_MIN_MS = 1000;
const TRY_LATER_WINDOW_MS = 5000;

// Error frames that answer a `subscribe`. The frame carries no topic, but the server
// answers frames in order, so the oldest unanswered subscribe is the one refused.
const SUBSCRIBE_ERRORS = new Set(['forbidden', 'bad_topic', 'too_many_topics']);

const CONNECTING = 0, OPEN = 1, CLOSED = 3; // WebSocket readyState values; not read from the constructor, fakes may lack them

const TRANSPORTS = ['websocket', 'sse'];
// Server frame types, each one SSE event name on the stream (`close` is handled apart).
const STREAM_FRAMES = ['welcome', 'message', 'pong', 'error', 'subscribed', 'refreshed'];

// Token refresh (docs/protocol.md §1, `refresh`): ask for a new token this long before the
// current one expires at the least, or a tenth of its lifetime when that is longer; never
// more than half the lifetime, so a short-lived token still gets a pause between refreshes.
const REFRESH_LEAD_MS = 30000;
// After the token function failed during a refresh, try again this much later.
const REFRESH_RETRY_MS = 5000;

export class HeraldClient {
  /** @param {import('./herald').HeraldOptions} options */
  constructor(options = {}) {
    if (!options.url) throw new TypeError('HeraldClient: options.url is required');
    if (!options.user) throw new TypeError('HeraldClient: options.user is required');
    this.user = options.user;
    this.device = options.device;
    /** Cursor of the last user message the application was given; sent back as `since=` on
     *  every (re)connect (docs/protocol.md §5). Kept in storage too, see _storage. */
    this.cursor = options.cursor || undefined;
    /** Session id from the latest welcome frame. */
    this.session = undefined;
    // Where the cursor outlives the page (reload, browser restart): localStorage by default.
    this._storage = pickStorage(options.cursorStorage);
    this._cursorKey = options.cursorKey || `herald.cursor.${options.user}`;

    const url = options.url.replace(/\/+$/, '');
    this._base = url.replace(/^http/, 'ws');       // http->ws, https->wss
    this._httpBase = url.replace(/^ws/, 'http');   // ws->http, wss->https: for SSE
    this._tokenOption = options.token;
    // Transports. null means none (also when a global exists); undefined, the global one.
    const transports = options.transports ?? TRANSPORTS;
    if (!Array.isArray(transports) || !transports.length || transports.some((t) => !TRANSPORTS.includes(t))) {
      throw new TypeError("HeraldClient: options.transports must list 'websocket' and/or 'sse'");
    }
    this._WebSocket = options.WebSocket === null ? null : options.WebSocket || globalThis.WebSocket;
    this._EventSource = options.EventSource === null ? null : options.EventSource || globalThis.EventSource;
    const fetchFn = options.fetch === null ? null : options.fetch || globalThis.fetch;
    // Called on globalThis: a browser's fetch throws "Illegal invocation" on another `this`.
    this._fetch = typeof fetchFn === 'function' ? (u, init) => fetchFn.call(globalThis, u, init) : null;
    this._canWs = transports.includes('websocket') && !!this._WebSocket;
    this._canSse = transports.includes('sse') && !!this._EventSource && !!this._fetch;
    if (!this._canWs && !this._canSse) {
      throw new TypeError(transports.includes('websocket')
        ? 'HeraldClient: no global WebSocket here (Node < 22): pass options.WebSocket'
          + (transports.includes('sse') ? ' (or EventSource and fetch, for Server-Sent Events)' : '')
        : 'HeraldClient: no EventSource or fetch here: pass options.EventSource and options.fetch');
    }
    // Fall back to SSE after this many WebSocket attempts in a row that did not open.
    this._fallbackAfter = Math.max(1, Math.floor(options.fallbackAfter ?? 2));
    // On SSE after a fallback, try WebSocket again this long after the last try (0: never).
    this._retryWsMs = options.retryWebSocketMs ?? 60000;
    this._backoff = { initialMs: 500, maxMs: 30000, ...options.backoff };
    this._pingMs = options.pingIntervalMs ?? 20000;
    this._restartMs = options.restartDelayMs ?? 3000;
    this._connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this._autoRefresh = options.autoRefresh ?? true;
    this._autoAck = options.autoAck === true;
    this._refreshLeadMs = options.refreshLeadMs ?? REFRESH_LEAD_MS;
    // Injectable so tests can drive time and jitter deterministically.
    this._random = options.random || Math.random;
    this._setTimeout = options.setTimeout || ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout || ((id) => globalThis.clearTimeout(id));
    this._now = options.now || (() => Date.now());
    this._document = 'document' in options ? options.document : globalThis.document;

    this._listeners = new Map(); // event -> Set of callbacks
    this._topics = new Map();    // topic -> { confirmed, waiters: [{resolve, reject}] }
    this._inflight = [];         // topics subscribed on the current socket, awaiting a reply
    this._state = 'idle';
    this._ws = null;             // the current connection: a WebSocket, or an SseSocket
    this._opened = false;        // did the current socket ever open?
    this._transport = this._canWs ? 'websocket' : 'sse'; // of the current or next attempt
    this._wsFailures = 0;        // WebSocket attempts in a row that never opened
    this._wsTriedAt = 0;         // when WebSocket was last tried (ms), while on SSE after a fallback
    this._probe = null;          // on SSE: a WebSocket being tried alongside, {ws, token, seen}
    this._deferredClose = null;  // a 4001 of the SSE stream while a probe may have caused it
    this._seenIds = null;        // ids delivered over SSE while the adopted probe connected
    this._token = undefined;     // cached result of a token function
    this._tokenAt = 0;           // when it was obtained (ms), for its lifetime without iat
    this._socketToken = undefined; // the token the current socket was opened with
    this._expMs = undefined;     // when the current session's credentials expire (ms)
    this._refreshing = null;     // a refresh in progress: {} while fetching, then {token, at}
    this._attempt = 0;           // failed attempts since the last welcome; drives backoff
    this._tryLater = 0;          // 1013 closes seen (the pod was admitting too many at once)
    this._gen = 0;               // bumps on every attempt/close; stale async work checks it
    this._stopped = true;
    this._awaitingPong = false;
    this._timers = {
      reconnect: null, ping: null, connect: null, refresh: null, refreshAnswer: null, probe: null, probeConnect: null,
    };
  }

  /** "idle" before connect(), then "connecting", "open", "reconnecting" or "closed". */
  get state() { return this._state; }

  /** "websocket" or "sse": the transport of the current connection (or of the next attempt). */
  get transport() { return this._transport; }

  /** Subscribe to "message", "welcome", "state", "refreshed" or "error"; returns an
   *  unsubscribe function. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event)?.delete(fn);
  }

  /** Start connecting (and keep reconnecting until close() or a final close code). */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._attempt = 0;
    this._open('connecting');
    return this;
  }

  /** Publish upstream (NATS `<prefix>.up.<user>`). Returns false when not connected:
   *  nothing is queued, so an application that needs delivery retries on "open". */
  publish(event, data) {
    return this._send({ type: 'publish', event, data });
  }

  /** Acknowledge a message: a delivery receipt with this status (`received` by default;
   *  1-32 chars of a-z 0-9 _ -) published by the hub for services (e.g. `printed` once an
   *  order is printed). Returns false when not connected: acks are not queued. */
  ack(id, status = 'received') {
    return this._send({ type: 'ack', id, status });
  }

  /** Subscribe to a topic, now and after every reconnect. Resolves with the topic once the
   *  server confirms; rejects if the server refuses it (forbidden, bad_topic, ...). */
  subscribe(topic) {
    let entry = this._topics.get(topic);
    if (entry?.confirmed) return Promise.resolve(topic);
    const promise = new Promise((resolve, reject) => {
      if (!entry) {
        entry = { confirmed: false, waiters: [] };
        this._topics.set(topic, entry);
        this._sendSubscribe(topic); // if not open yet, the open handler sends it
      }
      entry.waiters.push({ resolve, reject });
    });
    // A caller may fire and forget; refusals are reported on "error" as well, so an
    // unobserved rejection must not become an unhandled-rejection crash in Node.
    promise.catch(() => {});
    return promise;
  }

  /** Stop a topic and forget it, so it is not resubscribed after a reconnect. */
  unsubscribe(topic) {
    const entry = this._topics.get(topic);
    if (!entry) return;
    this._topics.delete(topic);
    rejectAll(entry, new Error(`unsubscribed from ${topic}`));
    this._send({ type: 'unsubscribe', topic });
  }

  /** Close for good (code 1000): no reconnect until connect() is called again. */
  close() {
    this._gen++;
    this._stopped = true;
    const ws = this._ws;
    this._detach();
    if (ws) try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
    for (const entry of this._topics.values()) rejectAll(entry, new Error('client closed'));
    this._topics.clear();
    this._setState('closed', { code: 1000, reason: 'client closed' });
  }

  // ---- connection lifecycle ----

  async _open(state) {
    const gen = ++this._gen;
    this._transport = this._pickTransport();
    if (state) this._setState(state);
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      if (gen !== this._gen) return;
      this._emitError('token', `token function failed: ${err?.message || err}`, err);
      this._scheduleReconnect(1006, 'token unavailable');
      return;
    }
    if (gen !== this._gen) return; // close() or another attempt overtook this one

    const sse = this._transport === 'sse';
    let ws;
    try {
      ws = sse ? this._openSse(token) : new this._WebSocket(this._url(token, 'websocket'));
    } catch (err) { // e.g. a malformed URL: retrying cannot fix it
      const what = sse ? 'EventSource' : 'WebSocket';
      this._emitError('transport', `cannot open ${what}: ${err?.message || err}`, err);
      this._stopped = true;
      this._setState('closed', { code: 1006, reason: `cannot open ${what}` });
      return;
    }
    this._ws = ws;
    this._opened = false;
    this._socketToken = token;
    // Browsers can sit in CONNECTING for minutes on a black-holed network; give up sooner.
    // (An SSE connection counts as open at its welcome: only then can frames be POSTed.)
    this._timers.connect = this._setTimeout(() => {
      this._timers.connect = null;
      if (ws === this._ws && !this._opened) this._drop('connect timeout');
    }, this._connectTimeoutMs);

    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._clearTimer('connect');
      this._opened = true;
      this._awaitingPong = false;
      if (!sse) this._wsFailures = 0;
      this._setState('open');
      if (ws !== this._ws) return; // a state listener called close()
      for (const topic of this._topics.keys()) this._sendSubscribe(topic);
      this._schedulePing();
      if (sse) this._scheduleProbe();
    };
    this._wire(ws);
  }

  /** The handlers every connection has, whether it was opened or adopted (see _adopt). */
  _wire(ws) {
    const sse = ws instanceof SseSocket;
    ws.onmessage = (ev) => { if (ws === this._ws) this._onFrame(ev.data); };
    ws.onerror = (ev) => {
      if (ws === this._ws) this._emitError('transport', sse ? ev?.message || 'EventSource error' : 'WebSocket error');
    };
    ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason); };
    if (sse) ws.onrefused = (frame, status, text) => { if (ws === this._ws) this._onRefused(frame, status, text); };
  }

  /** The transport of the next attempt: WebSocket unless it failed to open `fallbackAfter`
   *  times in a row (then SSE, until `retryWebSocketMs` after the last WebSocket try). */
  _pickTransport() {
    if (!this._canSse) return 'websocket';
    if (!this._canWs) return 'sse';
    if (this._transport === 'sse') {
      if (!this._retryWsDue()) return 'sse';
      this._wsFailures = this._fallbackAfter - 1; // one more failure goes straight back to SSE
      return 'websocket';
    }
    if (this._wsFailures < this._fallbackAfter) return 'websocket';
    this._wsTriedAt = this._now();
    return 'sse';
  }

  _retryWsDue() {
    return this._retryWsEnabled() && this._now() - this._wsTriedAt >= this._retryWsMs;
  }

  _retryWsEnabled() {
    return this._canWs && Number.isFinite(this._retryWsMs) && this._retryWsMs > 0;
  }

  _openSse(token) {
    const user = encodeURIComponent(this.user);
    return new SseSocket(this._url(token, 'sse'), {
      EventSource: this._EventSource,
      fetch: this._fetch,
      // POST /sse/{user}/{session}, with the session's current token (it changes on refresh)
      postUrl: (session) => {
        const t = this._socketToken;
        return `${this._httpBase}/sse/${user}/${encodeURIComponent(session)}${t ? `?token=${encodeURIComponent(t)}` : ''}`;
      },
      token: () => this._socketToken,
      // Cookie auth (no token) needs the cookie sent cross-origin too.
      withCredentials: !token,
      timeoutMs: this._connectTimeoutMs,
      setTimeout: this._setTimeout,
      clearTimeout: this._clearTimeout,
    });
  }

  async _getToken() {
    const t = this._tokenOption;
    if (typeof t !== 'function') return t; // a fixed string, or none (cookie/loopback auth)
    if (this._token === undefined) {
      this._token = await t();
      this._tokenAt = this._now();
    }
    return this._token;
  }

  /** The WebSocket URL (ws(s)://…/websocket/{user}) or the SSE stream's (http(s)://…/sse/{user}). */
  _url(token, transport) {
    const q = new URLSearchParams();
    if (token) q.set('token', token);
    if (this.device) q.set('device', this.device);
    const since = this._resumeCursor();
    if (since) q.set('since', since);
    const qs = q.toString();
    const base = transport === 'sse' ? `${this._httpBase}/sse` : `${this._base}/websocket`;
    return `${base}/${encodeURIComponent(this.user)}${qs ? `?${qs}` : ''}`;
  }

  _onClose(code, reason) {
    const opened = this._opened;
    if (code === 4001 && this._probe && this._transport === 'sse') {
      // The WebSocket being tried may be what replaced this stream (same device): wait for
      // it. If it fails, this close is handled then (see _probeFailed).
      silence(this._ws);
      this._clearTimer('ping');
      this._deferredClose = { code, reason };
      return;
    }
    this._detach();
    if (this._transport === 'websocket' && !opened) this._wsFailures++;
    if (this._stopped) return;
    if (NO_RECONNECT.has(code)) {
      this._stopped = true;
      for (const entry of this._topics.values()) rejectAll(entry, new Error(`closed with ${code}`));
      this._setState('closed', { code, reason });
      return;
    }
    // 4003: the token expired. A socket that never opened was refused before the upgrade
    // (401/429/503 all look alike to a browser, code 1006), possibly for a stale token.
    // Either way the next attempt asks the token function again.
    if (code === 4003 || !opened) this._token = undefined;
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason) {
    const { initialMs, maxMs } = this._backoff;
    let windowMs;
    let minMs = 0;
    if (code === 1013) {
      // A storm: the pod turned this handshake away. Come back later than a plain
      // failure would, spread out, and further apart each time.
      this._tryLater++;
      minMs = TRY_LATER_MIN_MS;
      windowMs = Math.min(maxMs, Math.max(TRY_LATER_WINDOW_MS, initialMs * 2 ** (this._attempt + 3)));
    } else if (code === 1012) {
      // The pod is restarting or draining: every client it had comes back at once,
      // so spread them over a window rather than the short first backoff step.
      windowMs = Math.max(this._restartMs, initialMs);
    } else {
      // 4029 (rate limited) asks us to come back later: start a few steps up the ladder.
      const step = code === 4029 ? Math.max(this._attempt, 3) : this._attempt;
      windowMs = Math.min(maxMs, initialMs * 2 ** step);
    }
    const delayMs = minMs + Math.floor(this._random() * windowMs); // full jitter over the window
    this._attempt++;
    this._setState('reconnecting', { code, reason, delayMs, attempt: this._attempt, tryLater: this._tryLater }, true);
    this._timers.reconnect = this._setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delayMs);
  }

  /** Abandon a socket that looks dead without waiting for its close handshake. */
  _drop(reason) {
    const ws = this._ws;
    silence(ws); // its late events mean nothing now
    try { ws.close(4000, reason); } catch { /* not open yet or already gone */ }
    this._emitError('transport', reason);
    this._onClose(1006, reason);
  }

  _detach() {
    if (this._ws) silence(this._ws);
    if (this._probe) {
      silence(this._probe.ws);
      try { this._probe.ws.close(1000, 'not needed'); } catch { /* already gone */ }
      this._probe = null;
    }
    this._deferredClose = null;
    this._seenIds = null;
    this._ws = null;
    this._opened = false;
    this._inflight = [];
    this._refreshing = null;
    for (const entry of this._topics.values()) entry.confirmed = false;
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }

  // ---- SSE: refused POSTs, and trying WebSocket again ----

  /** A POSTed frame was refused (not 202; a 404 ends the stream instead, see SseSocket):
   *  report it, and settle what waited for the answer that will not come on the stream. */
  _onRefused(frame, status, text) {
    const code = status === 429 ? 'rate_limited'
      : status === 400 || status === 413 ? 'bad_frame'
        : status === 401 || status === 403 ? 'unauthorized' : 'transport';
    const message = `POST of a ${frame?.type} frame refused: ${status}${text ? ` ${text}` : ''}`;
    if (frame?.type === 'ping') this._awaitingPong = false; // the hub answered, just not with a pong
    if (frame?.type === 'subscribe') {
      const topic = frame.topic;
      const i = this._inflight.indexOf(topic);
      if (i >= 0) this._inflight.splice(i, 1);
      const entry = this._topics.get(topic);
      this._topics.delete(topic); // refused: do not resubscribe after reconnects
      if (entry) rejectAll(entry, Object.assign(new Error(message), { code, topic, status }));
      this._emit('error', { type: 'error', code, message, status, topic });
      return;
    }
    this._emit('error', { type: 'error', code, message, status });
    if (frame?.type === 'refresh' && this._refreshing?.token) this._refreshFailed('token refresh refused');
  }

  // While on SSE after a fallback, a WebSocket is opened alongside the stream every
  // retryWebSocketMs. The stream stays in use until that socket's welcome (its session then
  // receives everything), so switching loses nothing; a socket that fails is dropped quietly.

  _scheduleProbe() {
    this._clearTimer('probe');
    if (!this._retryWsEnabled() || this._probe) return;
    const delayMs = Math.max(0, this._wsTriedAt + this._retryWsMs - this._now());
    this._timers.probe = this._setTimeout(() => {
      this._timers.probe = null;
      this._startProbe();
    }, delayMs);
  }

  _startProbe() {
    if (!this._ws || this._transport !== 'sse' || this._state !== 'open' || this._probe) return;
    this._wsTriedAt = this._now();
    const token = this._socketToken;
    let ws;
    try {
      ws = new this._WebSocket(this._url(token, 'websocket'));
    } catch {
      this._scheduleProbe();
      return;
    }
    // Ids of messages the stream delivers meanwhile: the socket may deliver them again
    // (a replay after since=, or both sessions live for a moment).
    this._probe = { ws, token, seen: new Set() };
    this._timers.probeConnect = this._setTimeout(() => {
      this._timers.probeConnect = null;
      this._probeFailed();
    }, this._connectTimeoutMs);
    ws.onmessage = (ev) => { if (this._probe?.ws === ws) this._adopt(ev.data); };
    ws.onclose = () => { if (this._probe?.ws === ws) this._probeFailed(); };
  }

  _probeFailed() {
    const probe = this._probe;
    if (!probe) return;
    this._probe = null;
    this._clearTimer('probeConnect');
    silence(probe.ws);
    try { probe.ws.close(1000, 'staying on SSE'); } catch { /* already gone */ }
    this._wsTriedAt = this._now();
    const deferred = this._deferredClose;
    if (deferred) {
      this._deferredClose = null;
      this._onClose(deferred.code, deferred.reason);
      return;
    }
    this._scheduleProbe();
  }

  /** The probe's first frame (its welcome) arrived: it becomes the connection. */
  _adopt(raw) {
    const { ws, token, seen } = this._probe;
    this._probe = null;
    this._deferredClose = null;
    const sse = this._ws;
    if (sse) {
      silence(sse);
      try { sse.close(1000, 'switched to WebSocket'); } catch { /* already gone */ }
    }
    for (const name of ['probeConnect', 'connect', 'ping', 'refreshAnswer']) this._clearTimer(name);
    this._inflight = [];
    this._refreshing = null;
    for (const entry of this._topics.values()) entry.confirmed = false;
    this._ws = ws;
    this._transport = 'websocket';
    this._wsFailures = 0;
    this._opened = true;
    this._awaitingPong = false;
    this._socketToken = token;
    this._seenIds = seen;
    this._wire(ws);
    this._setState('open', {}, true); // same state, another transport
    if (ws !== this._ws) return;
    for (const topic of this._topics.keys()) this._sendSubscribe(topic);
    this._schedulePing();
    this._onFrame(raw);
  }

  // ---- cursor ----
  // Every storage access is guarded: localStorage throws when disabled (Safari private
  // mode, blocked cookies), when full, or is missing (Node). Losing the stored cursor only
  // costs a replay, so failures are ignored rather than reported.

  /** The cursor to resume from: the one in memory, else the stored one (another tab of this
   *  user may have stored it since the page loaded). */
  _resumeCursor() {
    if (!this.cursor && this._storage) {
      let stored = null;
      try { stored = this._storage.getItem(this._cursorKey); } catch { /* unreadable: none */ }
      if (typeof stored === 'string' && stored) this.cursor = stored;
    }
    return this.cursor;
  }

  _saveCursor(cursor) {
    this.cursor = cursor;
    if (!this._storage) return;
    try { this._storage.setItem(this._cursorKey, cursor); } catch { /* full or disabled */ }
  }

  // ---- frames ----

  _onFrame(raw) {
    this._awaitingPong = false; // any frame proves the connection is alive
    if (typeof raw !== 'string') return this._emitError('protocol', 'unexpected binary frame');
    let frame;
    try { frame = JSON.parse(raw); } catch { return this._emitError('protocol', 'invalid JSON frame'); }
    switch (frame?.type) {
      case 'welcome':
        this._attempt = 0; // a session was established: the next failure starts the ladder over
        this.session = frame.session;
        this._expMs = claimMs(this._socketToken, 'exp');
        this._scheduleRefresh(claimMs(this._socketToken, 'iat') ?? this._tokenAt);
        this._emit('welcome', frame);
        break;
      case 'refreshed':
        this._onRefreshed(frame);
        break;
      case 'message':
        if (typeof frame.id === 'string') {
          // Switching from SSE to WebSocket: both may carry a message for a moment.
          if (this._seenIds?.has(frame.id)) break;
          this._probe?.seen.add(frame.id);
        }
        if (typeof frame.id === 'string') {
          // Not enumerable: the frame still prints and serialises as the hub sent it.
          Object.defineProperty(frame, 'ack', {
            value: (status = 'received') => this.ack(frame.id, status),
            enumerable: false,
          });
        }
        this._emit('message', frame);
        // Only once the handlers have run: a page that dies inside one (tab closed, crash)
        // gets the message again on its next start rather than losing it.
        if (resumable(frame)) this._saveCursor(frame.cursor);
        // A receipt that the message reached this device (user messages: the ones a
        // service can wait for).
        if (this._autoAck && frame.source === 'user' && typeof frame.id === 'string') {
          this.ack(frame.id, 'received');
        }
        break;
      case 'subscribed': {
        const i = this._inflight.indexOf(frame.topic);
        if (i >= 0) this._inflight.splice(i, 1);
        const entry = this._topics.get(frame.topic);
        if (entry) {
          entry.confirmed = true;
          for (const w of entry.waiters.splice(0)) w.resolve(frame.topic);
        }
        break;
      }
      case 'error':
        if (SUBSCRIBE_ERRORS.has(frame.code) && this._inflight.length) {
          const topic = this._inflight.shift();
          const entry = this._topics.get(topic);
          this._topics.delete(topic); // refused: do not resubscribe after reconnects
          const err = Object.assign(new Error(frame.message || frame.code), { code: frame.code, topic });
          if (entry) rejectAll(entry, err);
          this._emit('error', { ...frame, topic });
        } else {
          this._emit('error', frame);
          // The hub refused the new token: this session ends at the old exp, so reconnect
          // now, with a token fresh from the token function.
          if (frame.code === 'bad_token' && this._refreshing?.token) this._refreshFailed('token refresh refused');
        }
        break;
      default: // "pong", or a frame type newer than this client: nothing to do
    }
  }

  // ---- token refresh ----
  // With a token function, the client asks it for a new token shortly before the current
  // one expires and sends it in a `refresh` frame, so the session is not closed with 4003.
  // If the hub refuses it (bad_token) or does not answer, the client reconnects with a
  // fresh token instead, still before the old one expires.

  /** Plan the next refresh for the credentials expiring at `_expMs`, issued at `issuedMs`. */
  _scheduleRefresh(issuedMs) {
    this._clearTimer('refresh');
    const exp = this._expMs;
    if (!this._autoRefresh || typeof this._tokenOption !== 'function' || !Number.isFinite(exp)) return;
    const now = this._now();
    const lifetime = Math.max(0, exp - (Number.isFinite(issuedMs) ? issuedMs : now));
    const lead = Math.min(Math.max(this._refreshLeadMs, lifetime / 10), lifetime / 2);
    const delayMs = Math.max(0, Math.floor(exp - lead - now));
    this._timers.refresh = this._setTimeout(() => {
      this._timers.refresh = null;
      this._refresh();
    }, delayMs);
  }

  async _refresh() {
    const ws = this._ws;
    if (!ws || this._state !== 'open' || this._refreshing) return;
    this._refreshing = {};
    let token;
    try {
      token = await this._tokenOption();
    } catch (err) {
      if (ws !== this._ws) return;
      this._refreshing = null;
      this._emitError('token', `token function failed: ${err?.message || err}`, err);
      this._timers.refresh = this._setTimeout(() => {
        this._timers.refresh = null;
        this._refresh();
      }, REFRESH_RETRY_MS);
      return;
    }
    if (ws !== this._ws) return; // that socket is gone, and its refresh with it
    this._refreshing = null;
    if (this._state !== 'open') return;
    const exp = claimMs(token, 'exp');
    if (typeof token !== 'string' || !token || (exp !== undefined && this._expMs !== undefined && exp <= this._expMs)) {
      // Not newer than the current one: ask again a little later while that may still help;
      // otherwise the hub closes with 4003 at exp and the reconnect asks for a fresh token.
      if (this._now() + REFRESH_RETRY_MS < this._expMs) {
        this._timers.refresh = this._setTimeout(() => {
          this._timers.refresh = null;
          this._refresh();
        }, REFRESH_RETRY_MS);
      }
      return;
    }
    if (!this._send({ type: 'refresh', token })) return;
    this._refreshing = { token, at: this._now() };
    this._timers.refreshAnswer = this._setTimeout(() => {
      this._timers.refreshAnswer = null;
      this._refreshFailed('no answer to refresh');
    }, this._connectTimeoutMs);
  }

  _onRefreshed(frame) {
    const sent = this._refreshing?.token ? this._refreshing : null;
    this._refreshing = null;
    this._clearTimer('refreshAnswer');
    if (sent) {
      // Later reconnects (after 4002, say) use the new token too.
      this._token = sent.token;
      this._tokenAt = sent.at;
      this._socketToken = sent.token;
    }
    for (const topic of Array.isArray(frame.unsubscribed) ? frame.unsubscribed : []) this._revoke(topic);
    this._expMs = typeof frame.exp === 'number' ? frame.exp * 1000 : claimMs(sent?.token, 'exp');
    this._scheduleRefresh(claimMs(sent?.token, 'iat') ?? sent?.at);
    this._emit('refreshed', frame);
  }

  /** The new token does not allow `topic`: the hub unsubscribed it; forget it here too. */
  _revoke(topic) {
    const i = this._inflight.indexOf(topic);
    if (i >= 0) this._inflight.splice(i, 1);
    const entry = this._topics.get(topic);
    if (!entry) return;
    this._topics.delete(topic);
    const message = `topic ${topic} is not allowed by the refreshed token`;
    rejectAll(entry, Object.assign(new Error(message), { code: 'forbidden', topic }));
    this._emit('error', { type: 'error', code: 'forbidden', message, topic });
  }

  _refreshFailed(reason) {
    const ws = this._ws;
    if (!ws) return;
    this._token = undefined; // the reconnect asks the token function again
    silence(ws);
    try { ws.close(4000, reason); } catch { /* already closing */ }
    this._onClose(4000, reason);
  }

  _sendSubscribe(topic) {
    if (this._send({ type: 'subscribe', topic })) this._inflight.push(topic);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || this._state !== 'open' || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // ---- application ping ----
  // The server pings at the WebSocket level, which keeps it sure of us. These pings let
  // *us* notice a dead connection (laptop sleep, network switch) that the browser would
  // otherwise report only after minutes: no frame at all within one interval = drop.

  _schedulePing() {
    if (!(this._pingMs > 0)) return;
    this._timers.ping = this._setTimeout(() => {
      this._timers.ping = null;
      if (!this._ws || this._state !== 'open') return;
      if (this._visible()) {
        if (this._awaitingPong) return this._drop('no reply to ping');
        this._awaitingPong = true;
        this._send({ type: 'ping' });
      } else {
        // Hidden tabs get throttled timers, so silence there proves nothing; the
        // browser still answers the server's WebSocket pings, which keeps us alive.
        this._awaitingPong = false;
      }
      this._schedulePing();
    }, this._pingMs);
  }

  _visible() {
    const doc = this._document;
    return !doc || doc.visibilityState !== 'hidden';
  }

  // ---- helpers ----

  _clearTimer(name) {
    if (this._timers[name] != null) this._clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }

  _setState(state, info = {}, always = false) {
    if (state === this._state && !always) return;
    this._state = state;
    this._emit('state', state, { ...info, transport: this._transport });
  }

  _emitError(code, message, cause) {
    this._emit('error', { type: 'error', code, message, cause });
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(...args);
      } catch (err) {
        // A throwing listener must not break the connection state machine; rethrow
        // outside it so the failure still shows up in the console.
        queueMicrotask(() => { throw err; });
      }
    }
  }
}

/**
 * The SSE transport behind the WebSocket interface the client drives (readyState, send,
 * close, onopen/onmessage/onerror/onclose): an EventSource on GET /sse/{user} carries the
 * server's frames, one SSE event each, and every client frame is one fetch POST to
 * /sse/{user}/{session}. It counts as open at the welcome (which names the session). The
 * EventSource never reconnects by itself: any failure closes it and reports close 1006, so
 * the client reconnects with its own backoff and since=. POSTs go one at a time, in order.
 */
class SseSocket {
  constructor(url, options) {
    this.url = url;
    this.readyState = CONNECTING;
    this.session = undefined;
    this.onopen = this.onmessage = this.onerror = this.onclose = this.onrefused = null;
    this._o = options;
    this._queue = [];   // frames (JSON text) waiting for their POST
    this._posting = false;
    this._abort = null; // aborts the POST in flight
    const es = new options.EventSource(url, options.withCredentials ? { withCredentials: true } : undefined);
    this._es = es;
    const frame = (ev) => this._frame(ev);
    for (const type of STREAM_FRAMES) if (type !== 'error') es.addEventListener(type, frame);
    es.addEventListener('close', (ev) => this._closeFrame(ev));
    // "error" is the EventSource's own failure event and herald's error frame type alike:
    // only the frame carries data.
    es.addEventListener('error', (ev) => {
      if (typeof ev?.data === 'string') this._frame(ev);
      else this._fail(this.readyState === OPEN ? 'SSE stream ended' : 'SSE stream failed or refused');
    });
  }

  send(text) {
    if (this.readyState !== OPEN) throw new Error('send on an SSE connection that is not open');
    this._queue.push(text);
    if (!this._posting) this._pump();
  }

  /** Closes the stream and drops unsent frames; no event follows (as the client expects). */
  close() {
    this._shutdown();
  }

  _frame(ev) {
    if (this.readyState === CLOSED) return;
    if (ev.type === 'welcome' && this.readyState === CONNECTING) {
      let session;
      try { session = JSON.parse(ev.data)?.session; } catch { /* the client reports bad JSON */ }
      if (typeof session === 'string' && session) {
        this.session = session;
        this.readyState = OPEN;
        this.onopen?.({});
        if (this.readyState === CLOSED) return;
      }
    }
    this.onmessage?.({ data: ev.data });
  }

  /** `event: close`, `data: {"code":…,"reason":…}`: the session ended as a WebSocket would. */
  _closeFrame(ev) {
    if (this.readyState === CLOSED) return;
    let info = {};
    try { info = JSON.parse(ev.data) || {}; } catch { /* no code: treated as dropped */ }
    const code = Number.isInteger(info.code) ? info.code : 1006;
    this._shutdown();
    this.onclose?.({ code, reason: typeof info.reason === 'string' ? info.reason : '' });
  }

  _fail(message) {
    if (this.readyState === CLOSED) return;
    this._shutdown();
    this.onerror?.({ message });
    this.onclose?.({ code: 1006, reason: message });
  }

  _shutdown() {
    this.readyState = CLOSED;
    try { this._es.close(); } catch { /* already closed */ }
    this._queue = [];
    try { this._abort?.abort(); } catch { /* nothing in flight */ }
  }

  async _pump() {
    this._posting = true;
    while (this._queue.length && this.readyState === OPEN) {
      const text = this._queue.shift();
      let res;
      let body = '';
      try {
        res = await this._post(text);
        // Read every body, 202 included: an unread one can hold the connection (Node's fetch).
        body = await res.text().catch(() => '');
      } catch (err) {
        this._fail(`POST failed: ${err?.message || err}`);
        break;
      }
      if (this.readyState !== OPEN) break;
      if (res.status >= 200 && res.status < 300) continue;
      if (res.status === 404) { // no such session (any more): the stream is dead
        this._fail('SSE session gone (POST answered 404)');
        break;
      }
      let frame;
      try { frame = JSON.parse(text); } catch { frame = undefined; }
      this.onrefused?.(frame, res.status, String(body).trim().slice(0, 200));
    }
    this._posting = false;
  }

  _post(text) {
    const o = this._o;
    const token = o.token();
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const ctl = typeof AbortController === 'function' ? new AbortController() : null;
    this._abort = ctl;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = o.setTimeout(() => { ctl?.abort(); reject(new Error('timed out')); }, o.timeoutMs);
    });
    const request = o.fetch(o.postUrl(this.session), {
      method: 'POST',
      headers,
      body: text,
      credentials: token ? 'same-origin' : 'include',
      cache: 'no-store',
      signal: ctl?.signal,
    });
    return Promise.race([request, timeout]).finally(() => {
      o.clearTimeout(timer);
      if (this._abort === ctl) this._abort = null;
    });
  }
}

/** Detach every handler of a connection: its late events mean nothing any more. */
function silence(ws) {
  ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  if ('onrefused' in ws) ws.onrefused = null;
}

/** Can this message's cursor be resumed from? Only user messages are kept in durable mode
 *  (broadcast and topic ones are not), so only theirs mark a place in the user's stream. */
function resumable(frame) {
  return typeof frame.cursor === 'string' && frame.cursor !== ''
    && frame.source !== 'broadcast' && frame.source !== 'topic';
}

/** A numeric claim of a JWT (`exp`, `iat`) in ms, read without verifying anything; undefined
 *  when the token is not a JWT, has no such claim or atob is missing. */
function claimMs(token, name) {
  if (typeof token !== 'string' || typeof globalThis.atob !== 'function') return undefined;
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(globalThis.atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    const v = claims?.[name];
    return typeof v === 'number' && Number.isFinite(v) ? v * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** options.cursorStorage: undefined or true = localStorage if usable, false/null = none,
 *  else any object with getItem/setItem (sessionStorage, an in-memory fake, ...). */
function pickStorage(option) {
  if (option === false || option === null) return null;
  if (option === undefined || option === true) {
    try {
      const ls = globalThis.localStorage; // the getter itself throws where storage is denied
      return ls && typeof ls.getItem === 'function' && typeof ls.setItem === 'function' ? ls : null;
    } catch {
      return null;
    }
  }
  if (typeof option?.getItem !== 'function' || typeof option?.setItem !== 'function') {
    throw new TypeError('HeraldClient: options.cursorStorage must be false or have getItem and setItem');
  }
  return option;
}

function rejectAll(entry, err) {
  for (const w of entry.waiters.splice(0)) w.reject(err);
}

export default HeraldClient;
