// Type declarations for herald.js (the Herald push hub client).

export type HeraldState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

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
  /** WebSocket constructor, for Node < 22 (e.g. the `ws` package) or tests. Default: globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Reconnect backoff: delay = random(0, min(maxMs, initialMs * 2^attempt)). Default {initialMs: 500, maxMs: 30000}. */
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
  /** Server codes (forbidden, bad_topic, too_many_topics, bad_token, ...) or local ones: transport, token, protocol. */
  code: string;
  message: string;
  /** Set when the error refused a subscribe. */
  topic?: string;
  cause?: unknown;
}

export interface HeraldStateInfo {
  /** Close code that caused this state, when there is one. */
  code?: number;
  reason?: string;
  /** For "reconnecting": how long until the next attempt, and which attempt it is. */
  delayMs?: number;
  attempt?: number;
}

export interface HeraldEvents {
  message: (message: HeraldMessage) => void;
  welcome: (welcome: HeraldWelcome) => void;
  refreshed: (refreshed: HeraldRefreshed) => void;
  state: (state: HeraldState, info: HeraldStateInfo) => void;
  error: (error: HeraldError) => void;
}

export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
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
  on<E extends keyof HeraldEvents>(event: E, fn: HeraldEvents[E]): () => void;
  connect(): this;
  /** false when not connected (nothing is queued). */
  publish(event: string, data?: unknown): boolean;
  subscribe(topic: string): Promise<string>;
  unsubscribe(topic: string): void;
  close(): void;
}

export default HeraldClient;
