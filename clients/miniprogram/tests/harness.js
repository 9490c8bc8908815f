'use strict';
// Test harness: a real liveuser server (the binary `cargo build` makes) on loopback
// port 0, ready when it says on stdout where it serves, in mock WeChat mode, with its
// database in a temporary directory; and the client-side parts the tests plug into the
// client (in-memory storage, mock codes, a `request` that counts and can lose answers).

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { before, after } = require('node:test');
const { createClient, fetchRequest } = require('..');

const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.LIVEUSER_BIN || path.join(REPO, 'target', 'debug', 'liveuser');
const START_TIMEOUT_MS = 15000;

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function liveuserBin() {
  if (!fs.existsSync(BIN)) {
    throw new Error(
      `liveuser binary not found at ${BIN}: run \`cargo build --locked\` in ${REPO} first ` +
        '(or set LIVEUSER_BIN to the binary)'
    );
  }
  return BIN;
}

/**
 * Starts a server. `settings` adds TOML keys per section, e.g.
 * `{ limits: { login_per_min: 2 } }`. Resolves to `{ base, uidOf, cli, stop }`.
 */
async function startServer(settings = {}) {
  const bin = liveuserBin();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'liveuser-client-'));
  const sections = {
    server: { listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0' },
    storage: { path: path.join(dir, 'db') },
    wx: { mode: 'mock' },
    limits: { login_per_min: 0, renew_per_min: 0 },
    log: { format: 'json' },
  };
  for (const [section, keys] of Object.entries(settings)) {
    sections[section] = Object.assign({}, sections[section], keys);
  }
  const toml = Object.entries(sections)
    .map(([section, keys]) =>
      [`[${section}]`, ...Object.entries(keys).map(([k, v]) => `${k} = ${JSON.stringify(v)}`)].join('\n')
    )
    .join('\n');
  const config = path.join(dir, 'liveuser.toml');
  fs.writeFileSync(config, toml + '\n');

  const started = await startOnPortZero(bin, config);
  return served(started, bin, config, dir);
}

/**
 * Runs `liveuser serve` with both listeners on loopback port 0, and resolves to
 * `{ child, exited, base }` once the server says on stdout where it serves
 * (`listening public=<url> …`); rejects if it exits first or says nothing in time.
 */
function startOnPortZero(bin, config) {
  const env = Object.assign({}, process.env, {
    LIVEUSER_SERVER_LISTEN: '127.0.0.1:0',
    LIVEUSER_SERVER_ADMIN_LISTEN: '127.0.0.1:0',
  });
  const child = spawn(bin, ['--config', config, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'], env });
  running.add(child);
  // 'close' comes after the process ended and its pipes were read to the end.
  const exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  // Keep reading both pipes all the time (a full pipe would stall the server) and keep
  // the log's start for error messages.
  let logHead = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    if (logHead.length < 20000) logHead += chunk;
  });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`liveuser did not say where it serves within ${START_TIMEOUT_MS} ms:\n${logHead}`));
    }, START_TIMEOUT_MS);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      // Only whole lines: a chunk may end in the middle of the address.
      const lines = out.split('\n').slice(0, -1);
      const line = lines.find((l) => l.startsWith('listening '));
      const url = line && /(?:^| )public=(\S+)/.exec(line);
      if (url) {
        clearTimeout(timer);
        resolve({ child, exited, base: url[1] });
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      running.delete(child);
      reject(new Error(`liveuser exited (${code === null ? signal : code}) before it served:\n${logHead}`));
    });
  });
}

/** The object `startServer` resolves to, for a server that answers at `started.base`. */
function served(started, bin, config, dir) {
  const { child, exited, base } = started;
  return {
    base,
    /** Runs `liveuser --config <this server's file> ...args`; resolves to its stdout. */
    cli(...args) {
      return new Promise((resolve, reject) => {
        execFile(bin, ['--config', config, ...args], (err, stdout, stderr) => {
          if (err) reject(new Error(`liveuser ${args.join(' ')} failed: ${stderr}`));
          else resolve(stdout);
        });
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      running.delete(child);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One server for a test file: started before its tests, stopped after them. The object
 * returned gets the server's fields (`base`, `cli`) once it has started.
 */
function serverForFile(settings) {
  const server = {};
  before(async () => {
    Object.assign(server, await startServer(settings));
  });
  after(async () => {
    if (server.stop) await server.stop();
  });
  return server;
}

/**
 * A client of the server at `parts.base`, with in-memory storage (or `parts.storage`),
 * a mock user's codes (or `parts.user`'s) and a recording request (`parts.intercept`).
 */
function newClient(parts) {
  const user = parts.user || mockUser();
  const storage = parts.storage || memoryStorage();
  const request = recordingRequest(parts.intercept);
  const options = { baseUrl: parts.base, request, login: user.login, storage };
  if (parts.renewBeforeSecs !== undefined) options.renewBeforeSecs = parts.renewBeforeSecs;
  if (parts.timeoutMs !== undefined) options.timeoutMs = parts.timeoutMs;
  return { client: createClient(options), user, storage, request };
}

/** Storage in memory, with every write recorded (`writes`: `[key, value]`, value undefined for a remove). */
function memoryStorage() {
  const map = new Map();
  const writes = [];
  return {
    map,
    writes,
    get(key) {
      return map.has(key) ? map.get(key) : '';
    },
    set(key, value) {
      writes.push([key, value]);
      map.set(key, value);
    },
    remove(key) {
      writes.push([key, undefined]);
      map.delete(key);
    },
  };
}

let users = 0;

/** A mock WeChat user: `login` gives a fresh code (`name#n`) each time and counts them. */
function mockUser(label = 'user') {
  users += 1;
  const name = `${label}-${process.pid}-${users}-${Math.random().toString(36).slice(2, 8)}`;
  const codes = [];
  return {
    name,
    codes,
    login: async () => {
      const code = `${name}#${codes.length + 1}`;
      codes.push(code);
      return code;
    },
  };
}

/**
 * A `request` over `fetchRequest` that records every request (`log`: `{path, body,
 * header, timeout, status}`, status undefined when no answer reached the client)
 * and every answer body of Login and RenewToken (`answers`). `intercept(opts, send)`
 * may replace the default behaviour of one request (`send` is the real request).
 */
function recordingRequest(intercept) {
  const log = [];
  const answers = [];
  const fn = async (opts) => {
    const p = new URL(opts.url).pathname;
    const entry = { path: p, body: opts.data, header: opts.header, timeout: opts.timeout, status: undefined };
    log.push(entry);
    const send = async (o) => {
      const res = await fetchRequest(o);
      entry.status = res.status;
      if (res.status === 200 && (p.endsWith('/Login') || p.endsWith('/RenewToken'))) answers.push(res.data);
      return res;
    };
    return intercept ? intercept(opts, send, p) : send(opts);
  };
  fn.log = log;
  fn.answers = answers;
  fn.count = (suffix) => log.filter((r) => r.path.endsWith(suffix)).length;
  return fn;
}

/** An `intercept` under which every QueryUser carries an access token the server refuses. */
function refuseQueryUserToken(opts, send, path) {
  if (!path.endsWith('/QueryUser')) return send(opts);
  return send(Object.assign({}, opts, { header: Object.assign({}, opts.header, { Authorization: 'Bearer x.y.z' }) }));
}

/** The error `promise` rejects with; fails if it resolves. */
function rejection(promise) {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e) => e
  );
}

/** The stored login state of `storage` under `key`, parsed. */
function stored(storage, key = 'liveuser') {
  const value = storage.get(key);
  return value ? JSON.parse(value) : null;
}

/**
 * Makes the stored access token look expired `secsAgo` seconds ago, as if the app had
 * been closed past its expiry. (Waiting for a real expiry would take minutes: the
 * shortest lifetime the server allows is 60 s.)
 */
function makeStale(storage, secsAgo = 1, key = 'liveuser') {
  const state = stored(storage, key);
  state.expiry = Math.floor(Date.now() / 1000) - secsAgo;
  storage.map.set(key, JSON.stringify(state)); // not one of the client's writes

}

/** Listens on a free loopback port; resolves to the `base` URL of it. */
function listenOnLoopback(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`));
  });
}

/** Closes `server` and destroys the sockets it still has. */
function closeAll(server, sockets) {
  for (const socket of sockets) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * A TCP proxy to the server at `target` that loses the answer to the first request
 * whose first bytes match `lose`: the request reaches the server, which acts on it, and
 * its answer never reaches the client, the connection staying open (as when a phone's
 * network drops after sending). Resolves to `{ base, lost, close }`; `lost` holds the
 * text of each answer it kept from the client.
 */
async function lossyProxy(target, lose) {
  const port = Number(new URL(target).port);
  const sockets = new Set();
  const lost = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    sockets.add(client).add(upstream);
    let losing = null;
    client.on('data', (chunk) => {
      if (losing === null && lost.length === 0 && lose.test(chunk.toString('latin1'))) {
        losing = lost.push('') - 1;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (losing === null) client.write(chunk);
      else lost[losing] += chunk.toString('utf8');
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on('close', end);
      socket.on('error', end);
    }
  });
  const base = await listenOnLoopback(server);
  return { base, lost, close: () => closeAll(server, sockets) };
}

/** A server that accepts connections and never answers. Resolves to `{ base, close }`. */
async function blackHole() {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  const base = await listenOnLoopback(server);
  return { base, close: () => closeAll(server, sockets) };
}

/** The JSON body of an HTTP/1.1 answer's text (its length given by Content-Length). */
function jsonBodyOf(answer) {
  return JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4));
}

module.exports = {
  startServer,
  lossyProxy,
  blackHole,
  jsonBodyOf,
  serverForFile,
  newClient,
  memoryStorage,
  mockUser,
  recordingRequest,
  refuseQueryUserToken,
  rejection,
  stored,
  makeStale,
};
