// Type declarations of liveuser-miniprogram (index.js).

/** What a `request` adapter is given: the shape of `wx.request`'s options. */
export interface RequestOptions {
  url: string;
  method: string;
  header: Record<string, string>;
  /** The JSON body, as an object. */
  data?: unknown;
  /** How long to wait for the whole answer, in ms; then reject (a network error). */
  timeout?: number;
}

/** What a `request` adapter resolves to when an HTTP answer came, whatever its status. */
export interface RequestResponse {
  status: number;
  /** Header names in lower case. */
  headers: Record<string, string>;
  /** The parsed JSON body (or the body's text when it is not JSON). */
  data: unknown;
}

/** Sends one HTTP request. Rejects only when no HTTP answer came in time (a network error). */
export type Request = (opts: RequestOptions) => Promise<RequestResponse>;

/** Where the tokens are kept across app restarts (synchronous, like `wx.getStorageSync`). */
export interface Storage {
  /** The stored value, or `""`, `undefined` or `null` when there is none. */
  get(key: string): unknown;
  set(key: string, value: string): void;
  remove(key: string): void;
}

export interface ClientOptions {
  /** The liveuser server, e.g. `"https://api.example.com"`. */
  baseUrl: string;
  /** Default: `wx.request`. */
  request?: Request;
  /** A fresh login code. Default: `wx.login`. */
  login?: () => Promise<string>;
  /** Default: `wx.getStorageSync`, `wx.setStorageSync`, `wx.removeStorageSync`. */
  storage?: Storage;
  /** The one storage key the tokens are kept under. Default `"liveuser"`. */
  storageKey?: string;
  /** Renew an access token this many seconds before its expiry. Default 60. */
  renewBeforeSecs?: number;
  /**
   * How long each request waits for its answer, in ms, given to `request` as
   * `opts.timeout`. Default 8000: a renewal whose answer is lost is retried once with
   * the same refresh token, and the server takes that for a retry only within its grace
   * window (`token.reuse_grace_secs`, 10 s by default), so keep this below the window.
   */
  timeoutMs?: number;
}

/** A user's profile, as the API has it (all strings; `update_at` is set by the server). */
export interface UserRecord {
  uid?: string;
  name?: string;
  agent?: string;
  update_at?: string;
  avatar?: string;
}

export interface Client {
  /** Logs in with a fresh code unless the client holds tokens already. */
  login(): Promise<{ uid: string }>;
  /** Writes the caller's own record; fields left out keep their stored values. */
  addUser(fields: UserRecord): Promise<void>;
  /** The records that exist, in the order asked. */
  queryUser(uids: string[]): Promise<UserRecord[]>;
  /**
   * Any authenticated method: POST `path` (e.g. `"/liveuser/User/QueryUser"`) with `body`.
   * Only liveuser's paths are taken (`/liveuser/` and segments of letters, digits, `_`
   * and `-`); any other rejects with code `invalid_path` and sends nothing.
   */
  call<T = unknown>(path: string, body?: object): Promise<T>;
  /**
   * `"Bearer <access token>"` for the `Authorization` header of requests to your own
   * backends, after a login or renewal if one is due (as before a call). Your backend
   * checks it with liveuser's JWKS or `/liveuser/Auth/Check`.
   */
  authorization(): Promise<string>;
  /** The logged-in user's uid, or `null`. */
  readonly uid: string | null;
  /** Forgets the tokens, in memory and in storage. */
  logout(): void;
}

export function createClient(options: ClientOptions): Client;

/**
 * A `request` adapter over the standard `fetch` (Node 18+, browsers, H5 builds). It gives
 * up after `opts.timeout` ms (8000 when not given), which `fetch` alone never does.
 */
export const fetchRequest: Request;

/**
 * An error the server answered (its `code` and `msg`), or `code: "network"` with
 * `status: 0` when no answer came in time, or `code: "invalid_path"` with `status: 0`
 * when `call` was given a path that is not liveuser's. `message` is `msg`; it never
 * holds a token.
 */
export class LiveuserError extends Error {
  constructor(code: string, msg: string, status: number, retryAfter?: number);
  readonly name: 'LiveuserError';
  /** `invalid_argument`, `malformed`, `unauthenticated`, `permission_denied`, `bad_route`,
   *  `too_large`, `resource_exhausted`, `unavailable`, `internal`, or, from the client
   *  itself, `network` and `invalid_path`. */
  readonly code: string;
  readonly msg: string;
  /** The HTTP status, 0 when no answer came. */
  readonly status: number;
  /** Seconds to wait, from the answer's `Retry-After` (with `resource_exhausted`). */
  readonly retryAfter: number | undefined;
}
