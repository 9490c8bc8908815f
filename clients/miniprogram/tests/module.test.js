'use strict';
// The package as a mini-program gets it: loadable without `wx`, syntax the base library
// runs, and defaults that go through `wx` (here a stand-in for the base library whose
// wx.request talks to a real server).

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { createClient, fetchRequest, LiveuserError } = require('..');
const h = require('./harness');

const INDEX = path.join(__dirname, '..', 'index.js');

const server = h.serverForFile();

test('the module loads where there is no wx, and says which option is missing when one is needed', () => {
  const loaded = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(INDEX)}); console.log(typeof wx)`], {
    encoding: 'utf8',
  });
  assert.equal(loaded.status, 0, loaded.stderr);
  assert.equal(loaded.stdout.trim(), 'undefined');

  assert.throws(() => createClient({ baseUrl: server.base }), /no global wx here; pass options\.storage/);
  const client = createClient({ baseUrl: server.base, storage: h.memoryStorage(), request: fetchRequest });
  return assert.rejects(client.login(), /no global wx here; pass options\.login/);
});

test('index.js stays within ES2017 syntax, which the mini-program base library runs untranspiled', (t) => {
  // Node's own copy of acorn, so the check needs no package.
  const script = `
    const acorn = require('internal/deps/acorn/acorn/dist/acorn');
    const source = require('fs').readFileSync(${JSON.stringify(INDEX)}, 'utf8');
    try {
      acorn.parse(source, { ecmaVersion: 2017, sourceType: 'script' });
    } catch (e) {
      console.error(e.message);
      process.exit(1);
    }`;
  const run = spawnSync(process.execPath, ['--expose-internals', '-e', script], { encoding: 'utf8' });
  if (/Cannot find module/.test(run.stderr)) {
    t.skip('this Node has no internal acorn');
    return;
  }
  assert.equal(run.status, 0, `not ES2017: ${run.stderr}`);
  // The parser cannot see library calls newer than ES2017.
  const source = fs.readFileSync(INDEX, 'utf8');
  for (const newer of ['.finally(', '.flat(', '.flatMap(', 'Object.fromEntries', '.matchAll(', '.at(', 'globalThis', '.replaceAll(']) {
    assert.ok(!source.includes(newer), `index.js uses ${newer}`);
  }
});

/** A stand-in for the mini-program base library's wx, over a real network. */
function fakeWx() {
  const store = new Map();
  const calls = { request: 0, login: 0, timeouts: [] };
  let codes = 0;
  const name = h.mockUser('wx').name;
  return {
    store,
    calls,
    request(o) {
      calls.request += 1;
      calls.timeouts.push(o.timeout);
      fetch(o.url, { method: o.method, headers: o.header, body: JSON.stringify(o.data) }).then(
        async (res) => {
          // Header names as a server may spell them; wx passes them on unchanged.
          const header = {};
          res.headers.forEach((v, k) => {
            header[k.replace(/(^|-)[a-z]/g, (c) => c.toUpperCase())] = v;
          });
          const text = await res.text();
          let data = text;
          try {
            data = JSON.parse(text);
          } catch (e) {
            // wx hands over the text when it is not JSON
          }
          o.success({ statusCode: res.status, header, data, errMsg: 'request:ok' });
        },
        (err) => o.fail({ errMsg: `request:fail ${err.message}` })
      );
    },
    login(o) {
      calls.login += 1;
      setTimeout(() => o.success({ code: `${name}#${++codes}`, errMsg: 'login:ok' }), 1);
    },
    getStorageSync: (k) => (store.has(k) ? store.get(k) : ''),
    setStorageSync: (k, v) => store.set(k, v),
    removeStorageSync: (k) => store.delete(k),
  };
}

test('the defaults go through wx: wx.request, wx.login and the sync storage', async (t) => {
  globalThis.wx = fakeWx();
  t.after(() => delete globalThis.wx);
  const client = createClient({ baseUrl: server.base });

  await client.addUser({ name: 'Via wx' });
  const [me] = await client.queryUser([client.uid]);

  assert.equal(me.name, 'Via wx');
  assert.equal(wx.calls.login, 1);
  assert.equal(wx.calls.request, 3);
  // Short enough that a renewal retried after a lost answer lands in the server's
  // default 10 s grace window.
  assert.ok(wx.calls.timeouts.every((ms) => ms > 0 && ms <= 9000), String(wx.calls.timeouts));
  assert.equal(JSON.parse(wx.store.get('liveuser')).uid, client.uid);

  // Restored by the next launch, from wx storage.
  const next = createClient({ baseUrl: server.base });
  assert.equal(next.uid, client.uid);
  next.logout();
  assert.equal(wx.store.has('liveuser'), false);

  // A 4xx answer becomes a LiveuserError; a wx.request fail is a network error.
  await assert.rejects(client.addUser({ uid: 'someone-else' }), { code: 'permission_denied', status: 403 });
  const offline = createClient({ baseUrl: 'http://127.0.0.1:1' });
  const err = await h.rejection(offline.login());
  assert.ok(err instanceof LiveuserError);
  assert.equal(err.code, 'network');
  assert.match(err.message, /request:fail/);
});

test('the default request lower-cases header names, so Retry-After is found', async (t) => {
  const limited = await h.startServer({ limits: { login_per_min: 1 } });
  t.after(() => limited.stop());
  globalThis.wx = fakeWx();
  t.after(() => delete globalThis.wx);
  await createClient({ baseUrl: limited.base }).login();
  const err = await h.rejection(createClient({ baseUrl: limited.base, storage: h.memoryStorage() }).login());
  assert.equal(err.code, 'resource_exhausted');
  assert.ok(err.retryAfter > 0);
});

test('fetchRequest sends JSON and gives lower-case headers and parsed JSON back', async () => {
  const res = await fetchRequest({
    url: `${server.base}/liveuser/Wx/Login`,
    method: 'POST',
    header: {},
    data: { code: `${h.mockUser().name}#1` },
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-type'], 'application/json');
  assert.equal(typeof res.data.uid, 'string');
  assert.ok(Object.keys(res.headers).every((k) => k === k.toLowerCase()));

  const bad = await fetchRequest({ url: `${server.base}/liveuser/Wx/Login`, method: 'POST', header: { 'Content-Type': 'application/json' }, data: 'not json' });
  assert.equal(bad.status, 400);
  assert.equal(bad.data.code, 'malformed');
  assert.deepEqual(Object.keys(bad.data), ['code', 'msg']);

  const health = await fetchRequest({ url: `${server.base}/healthz`, method: 'GET', header: {} });
  assert.deepEqual(health.data, { status: 'ok' });
});
