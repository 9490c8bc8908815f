'use strict';
// liveuser-miniprogram: keeps a mini-program user logged in to a liveuser server.
//
// Plain CommonJS within ES2017 (no `?.`, `??`, class fields, object spread or
// `catch {}`), so WeChat DevTools' "build npm" and the mini-program base library take
// it as it is. The global `wx` is only touched when an option is left out and the
// default is used, so the module also loads in Node and browsers.
//
// Why the care: with refresh-token rotation, a refresh token may be presented once. A
// second renewal with the same token is accepted only as a retry within the server's
// grace window (token.reuse_grace_secs); later it is taken for theft and revokes the
// session. So all renewals and logins of one client go through one promise at a time
// ("flight"), a failed call renews only if nobody replaced its tokens already, and a
// renewal lost on the network, or not answered within the timeout, is retried at once
// with the same token, inside the window.

const LOGIN = '/liveuser/Wx/Login';
const RENEW = '/liveuser/Wx/RenewToken';
const ADD_USER = '/liveuser/User/AddUser';
const QUERY_USER = '/liveuser/User/QueryUser';

/** Pause before the one retry of a renewal or login lost on the network. */
const NETWORK_RETRY_MS = 200;

/**
 * How long a request waits for its answer, by default (`wx.request`'s own default is
 * 60 s, `fetch` has none). A renewal whose answer is lost is retried with the same
 * refresh token, which the server accepts only within its grace window
 * (`token.reuse_grace_secs`, 10 s by default) after the rotation; 8 s plus the retry's
 * pause keeps that retry inside the default window. Past it, the retry would be taken
 * for reuse and end the session.
 */
const DEFAULT_TIMEOUT_MS = 8000;

/**
 * The paths `call` sends the access token to: liveuser's own methods. The path is put
 * after `baseUrl`, so anything else could move the request to another port or host
 * (`'2:18099/steal'` after `http://127.0.0.1`) or out of liveuser's paths (`..`, `%2e`,
 * `?`, `\`), with the Bearer token.
 */
const LIVEUSER_PATH = /^\/liveuser(\/[A-Za-z0-9_-]+)+$/;

/**
 * An error answered by the server (`code` and `msg` from its error body, `status`), or
 * `code: "network"` with `status: 0` when no HTTP answer came (in time), or
 * `code: "invalid_path"`, `status: 0`, when `call` was given a path that is not
 * liveuser's. The message is `msg`: the server's sentence, or what failed. Never a
 * request body or header, and anything token-shaped is blanked.
 */
class LiveuserError extends Error {
  constructor(code, msg, status, retryAfter) {
    super(msg);
    this.code = code;
    this.msg = msg;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}
LiveuserError.prototype.name = 'LiveuserError';

function globalWx(needed) {
  if (typeof wx === 'undefined') {
    throw new Error(
      'liveuser-miniprogram: there is no global wx here; pass options.' + needed
    );
  }
  return wx; // eslint-disable-line no-undef
}

function lowerCaseKeys(headers) {
  const out = {};
  if (headers) {
    Object.keys(headers).forEach(function (name) {
      out[name.toLowerCase()] = String(headers[name]);
    });
  }
  return out;
}

/** The default `request`: `wx.request`, with a `fail` as a network error. */
function wxRequest(opts) {
  const api = globalWx('request');
  return new Promise(function (resolve, reject) {
    api.request({
      url: opts.url,
      method: opts.method,
      header: opts.header,
      data: opts.data,
      timeout: opts.timeout || DEFAULT_TIMEOUT_MS,
      success: function (res) {
        resolve({ status: res.statusCode, headers: lowerCaseKeys(res.header), data: res.data });
      },
      fail: function (err) {
        reject(networkError(err));
      },
    });
  });
}

/** The default `login`: a fresh code from `wx.login`. */
function wxLogin() {
  const api = globalWx('login');
  return new Promise(function (resolve, reject) {
    api.login({
      success: function (res) {
        if (res && typeof res.code === 'string' && res.code !== '') {
          resolve(res.code);
        } else {
          reject(new LiveuserError('network', 'wx.login gave no code', 0, undefined));
        }
      },
      fail: function (err) {
        reject(networkError(err, 'wx.login failed'));
      },
    });
  });
}

/** The default `storage`: the mini-program's synchronous local storage. */
const wxStorage = {
  get: function (key) {
    return globalWx('storage').getStorageSync(key);
  },
  set: function (key, value) {
    globalWx('storage').setStorageSync(key, value);
  },
  remove: function (key) {
    globalWx('storage').removeStorageSync(key);
  },
};

/**
 * A `request` over the standard `fetch` (Node 18+, browsers): the body is sent as JSON,
 * header names come back lower-cased, and `data` is the parsed body when the answer is
 * JSON (its text otherwise). A rejection means no HTTP answer, including none whole
 * within `opts.timeout` ms (8000 when not given): `fetch` itself would wait for ever.
 */
function fetchRequest(opts) {
  const timeoutMs = (opts && opts.timeout) || DEFAULT_TIMEOUT_MS;
  // Aborting also ends a body still on its way; where there is no AbortController, the
  // request is left to finish unheard.
  const controller = typeof AbortController === 'function' ? new AbortController() : null;
  let timer;
  const timedOut = new Promise(function (resolve, reject) {
    timer = setTimeout(function () {
      if (controller) controller.abort();
      reject(new LiveuserError('network', 'no answer from the server within ' + timeoutMs + ' ms', 0, undefined));
    }, timeoutMs);
  });
  const answered = fetchOnce(opts, controller ? controller.signal : undefined);
  return Promise.race([answered, timedOut]).then(
    function (res) {
      clearTimeout(timer);
      return res;
    },
    function (err) {
      clearTimeout(timer);
      throw err;
    }
  );
}

async function fetchOnce(opts, signal) {
  const header = Object.assign({}, opts.header);
  let body;
  if (opts.data !== undefined && opts.data !== null) {
    if (typeof opts.data === 'string') {
      body = opts.data;
    } else {
      body = JSON.stringify(opts.data);
      const named = Object.keys(header).some(function (name) {
        return name.toLowerCase() === 'content-type';
      });
      if (!named) header['Content-Type'] = 'application/json';
    }
  }
  const res = await fetch(opts.url, { method: opts.method || 'GET', headers: header, body: body, signal: signal });
  const headers = {};
  res.headers.forEach(function (value, name) {
    headers[name.toLowerCase()] = value;
  });
  const text = await res.text();
  let data = text;
  if (/^application\/([\w.-]+\+)?json\b/i.test(headers['content-type'] || '')) {
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = text;
    }
  }
  return { status: res.status, headers: headers, data: data };
}

// Anything that looks like a liveuser token (a JWT or an `lvrt_` refresh token) is
// blanked from text that came from elsewhere before it goes into an error, so a
// `request` adapter that echoes its request in its own error cannot leak one.
const TOKENISH = /eyJ[\w-]*\.[\w-]*\.[\w-]*|lvrt_[\w-]*/g;

function networkError(err, what) {
  let detail = '';
  if (err && typeof err.errMsg === 'string') detail = err.errMsg;
  else if (err && typeof err.message === 'string') detail = err.message;
  if (err && err.cause && typeof err.cause.code === 'string') detail += ' (' + err.cause.code + ')';
  const msg = (what || 'no answer from the server') + (detail ? ': ' + detail : '');
  return new LiveuserError('network', msg.replace(TOKENISH, '***'), 0, undefined);
}

// Codes for answers without liveuser's error body (e.g. from a proxy in front).
const CODE_FOR_STATUS = {
  400: 'malformed',
  401: 'unauthenticated',
  403: 'permission_denied',
  404: 'bad_route',
  405: 'bad_route',
  413: 'too_large',
  415: 'bad_route',
  429: 'resource_exhausted',
  502: 'unavailable',
  503: 'unavailable',
  504: 'unavailable',
};

function parseBody(data) {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch (e) {
    return undefined;
  }
}

function retryAfterSecs(headers) {
  const value = headers && headers['retry-after'];
  if (value === undefined || value === null || value === '') return undefined;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const at = Date.parse(text);
  if (isNaN(at)) return undefined;
  return Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

function answerError(res) {
  const body = parseBody(res.data);
  const known = body && typeof body === 'object' && typeof body.code === 'string';
  const code = known ? body.code : CODE_FOR_STATUS[res.status] || 'internal';
  const msg =
    known && typeof body.msg === 'string' ? body.msg : 'HTTP ' + res.status + ' without an error body';
  return new LiveuserError(code, msg.replace(TOKENISH, '***'), res.status, retryAfterSecs(res.headers));
}

function isSuccess(res) {
  return res.status >= 200 && res.status < 300;
}

/** The login state in an answer of Login or RenewToken, or in storage; null if incomplete. */
function loginState(value) {
  const v = parseBody(value);
  if (
    v &&
    typeof v === 'object' &&
    typeof v.access_token === 'string' &&
    v.access_token !== '' &&
    typeof v.refresh_token === 'string' &&
    v.refresh_token !== '' &&
    Number.isInteger(v.expiry) &&
    typeof v.uid === 'string' &&
    v.uid !== ''
  ) {
    return { access_token: v.access_token, refresh_token: v.refresh_token, expiry: v.expiry, uid: v.uid };
  }
  return null;
}

function delay(ms) {
  return new Promise(function (resolve) {
    setTimeout(resolve, ms);
  });
}

/**
 * A client for one liveuser server. Create one per mini-program (in app.js) and share
 * it: single flight holds only among the calls of one client.
 */
function createClient(options) {
  if (!options || typeof options.baseUrl !== 'string' || options.baseUrl === '') {
    throw new TypeError('liveuser-miniprogram: options.baseUrl is required');
  }
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  const request = options.request || wxRequest;
  const getCode = options.login || wxLogin;
  // The default storage is needed at once (to restore the tokens): say now, not never,
  // that it is missing outside a mini-program.
  if (!options.storage) globalWx('storage');
  const storage = options.storage || wxStorage;
  const storageKey = options.storageKey || 'liveuser';
  const renewBeforeSecs =
    typeof options.renewBeforeSecs === 'number' ? options.renewBeforeSecs : 60;
  const timeoutMs = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs;
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || timeoutMs === Infinity) {
    throw new TypeError('liveuser-miniprogram: options.timeoutMs must be a positive number of milliseconds');
  }

  // The state lives in this closure, not on the returned object, so logging the client
  // (console.log(client)) shows no token.
  let tokens = readStorage();
  // The one renewal or login in progress, shared by every caller that needs it.
  let flight = null;
  // Bumped by logout(), so a flight that started before it does not store its tokens.
  let epoch = 0;
  // Server clock minus device clock, in seconds, from the Date header of the last
  // answer: `expiry` is on the server's clock, and phones' clocks can be hours off.
  let skewSecs = 0;

  function readStorage() {
    try {
      return loginState(storage.get(storageKey));
    } catch (e) {
      return null;
    }
  }

  // One key, one write: storage never holds an access token of one login with the
  // refresh token of another. A storage that fails (full, say) keeps the client working
  // from memory for this run; the next start renews or logs in again.
  function writeStorage(state) {
    try {
      if (state) storage.set(storageKey, JSON.stringify(state));
      else storage.remove(storageKey);
    } catch (e) {
      // nothing more to do: the tokens in memory are still right
    }
  }

  function noteServerClock(res) {
    const date = res.headers && res.headers.date;
    const at = date ? Date.parse(date) : NaN;
    if (!isNaN(at)) skewSecs = Math.round((at - Date.now()) / 1000);
  }

  function isStale(state) {
    return state.expiry - (Date.now() / 1000 + skewSecs) <= renewBeforeSecs;
  }

  function send(path, body, accessToken) {
    const header = { 'Content-Type': 'application/json' };
    if (accessToken) header.Authorization = 'Bearer ' + accessToken;
    const opts = { url: baseUrl + path, method: 'POST', header: header, data: body, timeout: timeoutMs };
    return new Promise(function (resolve) {
      resolve(request(opts)); // an adapter that throws is taken as one that rejects
    }).catch(function (err) {
      // No HTTP answer. Only a LiveuserError the adapter made itself passes as it is;
      // anything else is described by its message alone, tokens blanked.
      throw err instanceof LiveuserError ? err : networkError(err);
    });
  }

  // Login and RenewToken: a network failure is retried once with the same body. That is
  // safe on the server's side: a refresh token presented again within the grace window
  // gets the same successor, and a code is idempotent for its 300 s life.
  async function exchange(path, body) {
    let res;
    try {
      res = await send(path, body);
    } catch (e) {
      if (!(e instanceof LiveuserError) || e.code !== 'network') throw e;
      await delay(NETWORK_RETRY_MS);
      res = await send(path, body);
    }
    noteServerClock(res);
    if (!isSuccess(res)) return { refused: answerError(res) };
    const state = loginState(res.data);
    if (!state) {
      throw new LiveuserError('internal', 'the server answered without a complete login state', res.status, undefined);
    }
    return { state: state };
  }

  async function acquire(previous, startEpoch) {
    if (previous) {
      const renewal = await exchange(RENEW, { refresh_token: previous.refresh_token });
      if (renewal.state) return renewal.state;
      // Anything but "refused" (rate limit, server unavailable) leaves the session as
      // it is: the caller gets the error and the tokens stay for the next try.
      if (renewal.refused.status !== 401) throw renewal.refused;
      // Revoked, expired or reused: this session is over. Forget it and log in again.
      if (startEpoch === epoch && tokens === previous) {
        tokens = null;
        writeStorage(null);
      }
    }
    const code = await getCode();
    const login = await exchange(LOGIN, { code: code });
    if (login.state) return login.state;
    throw login.refused;
  }

  // New tokens for a caller whose tokens `failed` (null: it had none). Joins the flight
  // in progress; if another caller already replaced `failed`, hands over the
  // replacement instead of renewing again with a refresh token that was already used.
  function obtain(failed) {
    if (flight) return flight;
    if (tokens && tokens !== failed) return Promise.resolve(tokens);
    const startEpoch = epoch;
    const current = acquire(tokens, startEpoch).then(
      function (state) {
        if (flight === current) flight = null;
        if (startEpoch === epoch) {
          tokens = state;
          writeStorage(state);
        }
        return state;
      },
      function (err) {
        if (flight === current) flight = null;
        throw err;
      }
    );
    flight = current;
    return current;
  }

  // Tokens good for a call: waits for a renewal or login in progress, logs in when
  // there are none, renews when the access token is close to its expiry.
  function tokensForCall() {
    if (flight) return flight;
    if (!tokens || isStale(tokens)) return obtain(tokens);
    return Promise.resolve(tokens);
  }

  async function call(path, body) {
    if (typeof path !== 'string' || !LIVEUSER_PATH.test(path)) {
      throw new LiveuserError(
        'invalid_path',
        'call() takes a path of liveuser, like /liveuser/User/QueryUser (letters, digits, _ and - between the slashes)',
        0,
        undefined
      );
    }
    const payload = body === undefined ? {} : body;
    let state = await tokensForCall();
    let res = await send(path, payload, state.access_token);
    if (res.status === 401) {
      // Renew (or log in again if the session is over) and try once more.
      state = await obtain(state);
      res = await send(path, payload, state.access_token);
    }
    if (!isSuccess(res)) throw answerError(res);
    const data = parseBody(res.data);
    return data === undefined || data === null ? {} : data;
  }

  const client = {
    /** Logs in unless the client holds tokens already; resolves to `{uid}`. */
    login: function () {
      const ready = tokens && !flight ? Promise.resolve(tokens) : obtain(null);
      return ready.then(function (state) {
        return { uid: state.uid };
      });
    },
    addUser: function (fields) {
      return call(ADD_USER, { user: fields || {} }).then(function () {
        return undefined;
      });
    },
    queryUser: function (uids) {
      return call(QUERY_USER, { uids: uids }).then(function (data) {
        return Array.isArray(data.users) ? data.users : [];
      });
    },
    call: call,
    /**
     * `"Bearer <access token>"`, for the Authorization header of requests to your own
     * backends (which check it with liveuser's JWKS or /liveuser/Auth/Check): logs in or
     * renews first, as a call would. The client never sends the token anywhere itself
     * but to liveuser; this hands it to you for the hosts you choose.
     */
    authorization: function () {
      return tokensForCall().then(function (state) {
        return 'Bearer ' + state.access_token;
      });
    },
    /** Forgets the tokens here and in storage. The session itself ends on the server when it expires. */
    logout: function () {
      epoch += 1;
      flight = null;
      tokens = null;
      writeStorage(null);
    },
  };
  Object.defineProperty(client, 'uid', {
    enumerable: true,
    get: function () {
      return tokens ? tokens.uid : null;
    },
  });
  return client;
}

module.exports = { createClient: createClient, fetchRequest: fetchRequest, LiveuserError: LiveuserError };
