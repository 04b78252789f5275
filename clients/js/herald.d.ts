// Type declarations for herald.js (the Herald push hub client).

export type HeraldState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** How the client talks to the hub: a WebSocket, or Server-Sent Events (an EventSource for
 *  the hub's frames, one fetch POST per client frame). */
export type HeraldTransport = 'websocket' | 'sse';

export interface HeraldOptions {
  /** Base URL of the hub: ws://, wss://, http:// or https:// (http maps to ws, https to wss). */
  url: string;
  /** User id: 1-128 chars of A-Z a-z 0-9 _ - = */
  user: string;
  /**
   * JWT, or a (possibly async) function returning a fresh one. Omit for cookie or loopback auth.
   * With a function, the client also refreshes the session's token before it expires (a
   * `refresh` frame; see `autoRefresh`).
   */
  token?: string | (() => string | Promise<string>);
  /**
   * Refresh the token in band before its `exp` (read from the JWT payload) when `token` is a
   * function. Default true.
   */
  autoRefresh?: boolean;
  /**
   * Refresh at least this long before `exp` (or a tenth of the token's lifetime, when that is
   * longer; never more than half of it). Default 30000.
   */
  refreshLeadMs?: number;
  /**
   * Acknowledge every user message with a `received` receipt once the `message` handlers
   * have run (a service waiting with `await` then learns it reached this device). Default false.
   */
  autoAck?: boolean;
  /** Device id; a newer session with the same user and device replaces this one (close 4001). */
  device?: string;
  /** Resume after this cursor on the first connect; takes precedence over a stored one. */
  cursor?: string;
  /**
   * Where the cursor of the last delivered user message is kept, so that a page reload or a
   * browser restart resumes with `since=` (durable mode replays what was missed). Default:
   * `globalThis.localStorage` when it is usable, else nothing. `false` (or `null`) keeps the
   * cursor in memory only; any object with `getItem`/`setItem` (e.g. `sessionStorage`) is used
   * instead. Every access is guarded: a throwing storage only means no stored cursor.
   */
  cursorStorage?: false | null | CursorStorage;
  /** Storage key of the cursor. Default `herald.cursor.<user>`. */
  cursorKey?: string;
  /**
   * WebSocket constructor, for Node < 22 (e.g. the `ws` package) or tests. Default:
   * globalThis.WebSocket; `null` means none (SSE only, if EventSource and fetch exist).
   */
  WebSocket?: (new (url: string) => WebSocketLike) | null;
  /**
   * Transports the client may use. Default `['websocket', 'sse']`: WebSocket, falling back to
   * SSE when WebSocket is missing or failed to open `fallbackAfter` times in a row.
   * `['websocket']` never falls back, `['sse']` uses SSE only. The order does not matter:
   * WebSocket is always the first choice when allowed and available.
   */
  transports?: HeraldTransport[];
  /** Switch to SSE after this many WebSocket attempts in a row that did not open. Default 2 (at least 1). */
  fallbackAfter?: number;
  /**
   * On SSE after a fallback, try WebSocket again this long after the last try (ms): a
   * WebSocket is opened alongside the working stream and takes over at its welcome, and a
   * reconnect after that long starts with WebSocket. `0` (or Infinity) stays on SSE. Default 60000.
   */
  retryWebSocketMs?: number;
  /** EventSource constructor for the SSE transport. Default globalThis.EventSource; `null` disables SSE. */
  EventSource?: (new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike) | null;
  /** fetch, for the SSE transport's POSTs. Default globalThis.fetch; `null` disables SSE. */
  fetch?: ((url: string, init: FetchInitLike) => Promise<FetchResponseLike>) | null;
  /** Reconnect backoff: delay = random(0, min(maxMs, initialMs * 2^attempt)); after a 1013, 1 s + random(0, min(maxMs, max(5 s, initialMs * 2^(attempt+3)))). Default {initialMs: 500, maxMs: 30000}. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Application ping interval while open and visible; 0 disables. Default 20000. */
  pingIntervalMs?: number;
  /** After close 1012 (server restart/drain) reconnect after random(0, restartDelayMs). Default 3000. */
  restartDelayMs?: number;
  /** Give up on a socket that has not opened after this long. Default 10000. */
  connectTimeoutMs?: number;
  /** Injection points for tests. */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  /** Current time in ms since the epoch (compared with token `exp`). Default Date.now. */
  now?: () => number;
  /** Visibility source; null means always visible. Default globalThis.document. */
  document?: { visibilityState?: string } | null;
}

/** The part of the Web Storage API the client uses (localStorage and sessionStorage fit). */
export interface CursorStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface HeraldWelcome {
  type: 'welcome';
  session: string;
  user: string;
  pod: string;
  heartbeat_ms: number;
  recovered?: boolean;
  replayed?: number;
}

export interface HeraldMessage<T = unknown> {
  type: 'message';
  id: string;
  cursor: string;
  source: 'user' | 'broadcast' | 'topic';
  topic?: string;
  event?: string;
  data: T;
  /**
   * Acknowledge this message: a delivery receipt with `status` (default `received`; 1-32
   * chars of a-z 0-9 _ -), e.g. `printed` once the order is printed. False when not
   * connected (acks are not queued). Not enumerable: absent from JSON.stringify(message).
   */
  ack(status?: string): boolean;
}

/** The hub's answer to a token refresh. */
export interface HeraldRefreshed {
  type: 'refreshed';
  /** The session's new expiry, seconds since the epoch (absent from an unsigned hub for a token without exp). */
  exp?: number;
  /** Topics the new token does not allow: the hub unsubscribed them (also reported as "forbidden" errors). */
  unsubscribed?: string[];
}

export interface HeraldError {
  type: 'error';
  /**
   * Server codes (forbidden, bad_topic, too_many_topics, bad_token, ...) or local ones:
   * transport, token, protocol; over SSE a refused POST also gives rate_limited (429),
   * bad_frame (400, 413), unauthorized (401, 403) or transport (others), with `status`.
   */
  code: string;
  message: string;
  /** Set when the error refused a subscribe. */
  topic?: string;
  /** SSE: the HTTP status of the refused POST. */
  status?: number;
  cause?: unknown;
}

export interface HeraldStateInfo {
  /** Close code that caused this state, when there is one. */
  code?: number;
  reason?: string;
  /** For "reconnecting": how long until the next attempt, and which attempt it is. */
  delayMs?: number;
  attempt?: number;
  /**
   * For "reconnecting": how many 1013 closes (the pod admitting handshakes slower than they
   * arrive, `--connect-rate`) this client has had. After one the delay is 1 s plus a random
   * share of max(5 s, initialMs * 2^(attempt+3)), at most maxMs.
   */
  tryLater?: number;
  /** The transport of the connection this state is about (the one that opened, closed or is being tried). */
  transport: HeraldTransport;
}

export interface HeraldEvents {
  message: (message: HeraldMessage) => void;
  welcome: (welcome: HeraldWelcome) => void;
  refreshed: (refreshed: HeraldRefreshed) => void;
  state: (state: HeraldState, info: HeraldStateInfo) => void;
  error: (error: HeraldError) => void;
}

// Handler parameters are `any` so that the DOM's WebSocket (whose handlers take Event,
// MessageEvent and CloseEvent) and the `ws` package both fit.
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
}

/** The part of the EventSource API the SSE transport uses. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (ev: any) => void): void;
  close(): void;
}

/** What the SSE transport passes to `fetch`. */
export interface FetchInitLike {
  method: 'POST';
  headers: Record<string, string>;
  body: string;
  credentials: 'same-origin' | 'include';
  cache: 'no-store';
  signal?: AbortSignal;
}

/** The part of a fetch Response the SSE transport reads. */
export interface FetchResponseLike {
  status: number;
  text(): Promise<string>;
}

export class HeraldClient {
  constructor(options: HeraldOptions);
  readonly user: string;
  readonly device?: string;
  /**
   * Cursor of the last user message whose `message` handlers have run (broadcast and topic
   * messages are not kept by the hub, so their cursors are not used); sent as since= on every
   * (re)connect and saved to `cursorStorage`.
   */
  cursor?: string;
  /** Session id from the latest welcome. */
  session?: string;
  readonly state: HeraldState;
  /** The transport of the current connection, or of the next attempt. */
  readonly transport: HeraldTransport;
  on<E extends keyof HeraldEvents>(event: E, fn: HeraldEvents[E]): () => void;
  connect(): this;
  /**
   * false when not connected (nothing is queued). Over SSE, true means the frame is queued
   * for its POST; a refused POST is reported as an `error` event.
   */
  /** Acknowledge message `id` with a delivery receipt (`message.ack(status)` does the same). */
  ack(id: string, status?: string): boolean;
  publish(event: string, data?: unknown): boolean;
  subscribe(topic: string): Promise<string>;
  unsubscribe(topic: string): void;
  close(): void;
}

export default HeraldClient;
