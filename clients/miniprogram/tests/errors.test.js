'use strict';
// What reaches the caller when things go wrong: rate limits, lost answers, refusals,
// and never a token in what an error or the console shows.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { createClient, fetchRequest, LiveuserError } = require('..');
const h = require('./harness');

const server = h.serverForFile();

function newClient(parts = {}) {
  return h.newClient(Object.assign({ base: server.base }, parts));
}

test('a 429 from Login reaches the caller with retryAfter and is not retried', async (t) => {
  const limited = await h.startServer({ limits: { login_per_min: 2 } });
  t.after(() => limited.stop());
  await newClient({ base: limited.base }).client.login();
  await newClient({ base: limited.base }).client.login();
  const { client, request } = newClient({ base: limited.base });

  const err = await h.rejection(client.queryUser(['nobody']));

  assert.ok(err instanceof LiveuserError);
  assert.equal(err.code, 'resource_exhausted');
  assert.equal(err.status, 429);
  assert.ok(Number.isInteger(err.retryAfter) && err.retryAfter > 0 && err.retryAfter <= 60, `retryAfter ${err.retryAfter}`);
  assert.equal(err.message, err.msg);
  assert.equal(request.log.length, 1, 'one Login, no retry, no call');
  assert.equal(client.uid, null);
});

test('a 429 from RenewToken reaches the caller and keeps the session', async (t) => {
  const limited = await h.startServer({ limits: { renew_per_min: 1 } });
  t.after(() => limited.stop());
  // renewBeforeSecs above the access token's 2 h lifetime: every call renews first.
  const { client, request, storage } = newClient({ base: limited.base, renewBeforeSecs: 86400 });
  await client.queryUser(['nobody']); // logs in
  await client.queryUser(['nobody']); // renews: the one renewal a minute
  assert.equal(request.count('/Wx/RenewToken'), 1);
  const before = storage.get('liveuser');

  const err = await h.rejection(client.queryUser(['nobody']));

  assert.equal(err.code, 'resource_exhausted');
  assert.equal(request.count('/Wx/RenewToken'), 2, 'not retried');
  assert.ok(err.retryAfter > 0);
  assert.equal(request.count('/Wx/Login'), 1, 'a rate limit is no reason to log in again');
  assert.equal(storage.get('liveuser'), before);
  assert.notEqual(client.uid, null);
});

test('a call that gets no answer fails with code "network" and is not retried', async () => {
  const intercept = (opts, send, path) => {
    if (path.endsWith('/QueryUser')) return Promise.reject(new Error('connect ETIMEDOUT'));
    return send(opts);
  };
  const { client, request, storage } = newClient({ intercept });
  await client.login();
  const before = storage.get('liveuser');

  const err = await h.rejection(client.queryUser(['nobody']));

  assert.ok(err instanceof LiveuserError);
  assert.equal(err.code, 'network');
  assert.equal(err.status, 0);
  assert.match(err.message, /ETIMEDOUT/);
  assert.equal(request.count('/User/QueryUser'), 1);
  assert.equal(storage.get('liveuser'), before);
});

test('a renewal lost twice on the network keeps the tokens; the next call renews with the same token', async () => {
  let down = true;
  const intercept = (opts, send, path) => {
    if (down && path.endsWith('/RenewToken')) return Promise.reject(new Error('getaddrinfo EAI_AGAIN'));
    return send(opts);
  };
  const first = newClient();
  await first.client.login();
  const x = h.stored(first.storage).refresh_token;
  h.makeStale(first.storage);
  const { client, request, storage } = newClient({ user: first.user, storage: first.storage, intercept });

  const err = await h.rejection(client.queryUser(['nobody']));
  assert.equal(err.code, 'network');
  assert.equal(request.count('/Wx/RenewToken'), 2, 'one retry');
  assert.ok(h.stored(storage).refresh_token === x, 'the stored pair is kept');
  assert.notEqual(client.uid, null);

  down = false;
  await client.queryUser(['nobody']);
  const renewals = request.log.filter((r) => r.path.endsWith('/RenewToken'));
  assert.ok(renewals.every((r) => r.body.refresh_token === x));
  assert.equal(renewals.at(-1).status, 200);
  assert.equal(request.count('/Wx/Login'), 0);
});

test('fetchRequest gives up on a server that never answers after opts.timeout, and after 8 s without one', { timeout: 30000 }, async (t) => {
  const hole = await h.blackHole();
  t.after(() => hole.close());
  const ask = async (timeout) => {
    const started = Date.now();
    const err = await h.rejection(
      fetchRequest({ url: `${hole.base}/liveuser/Wx/Login`, method: 'POST', header: {}, data: { code: 'x' }, timeout })
    );
    return { err, waited: Date.now() - started };
  };

  const short = await ask(300);
  assert.ok(short.err instanceof LiveuserError);
  assert.equal(short.err.code, 'network');
  assert.equal(short.err.status, 0);
  assert.match(short.err.message, /within 300 ms/);
  assert.ok(short.waited >= 300 && short.waited < 3000, `waited ${short.waited} ms`);

  // The default stays inside the server's default grace window of 10 s.
  const long = await ask(undefined);
  assert.equal(long.err.code, 'network');
  assert.ok(long.waited >= 8000 && long.waited < 9500, `waited ${long.waited} ms`);
});

test('every request of a client carries its timeout: 8000 ms unless options.timeoutMs says otherwise', async () => {
  const plain = newClient();
  await plain.client.queryUser(['nobody']);
  assert.ok(plain.request.log.length >= 2);
  assert.ok(plain.request.log.every((r) => r.timeout === 8000), JSON.stringify(plain.request.log.map((r) => r.timeout)));

  const quick = newClient({ timeoutMs: 2500 });
  await quick.client.queryUser(['nobody']);
  assert.ok(quick.request.log.every((r) => r.timeout === 2500));

  for (const timeoutMs of [0, -1, '5000', NaN, Infinity, null]) {
    assert.throws(
      () => createClient({ baseUrl: server.base, storage: h.memoryStorage(), login: async () => 'x', timeoutMs }),
      { name: 'TypeError', message: /options\.timeoutMs/ },
      String(timeoutMs)
    );
  }
});

test('call() takes only liveuser\'s paths, so the access token cannot be sent elsewhere', async () => {
  const { client, request } = newClient();
  const elsewhere = [
    '2:18099/steal', // after http://127.0.0.1 this was http://127.0.0.12:18099/steal
    '@127.0.0.12/steal',
    '//127.0.0.12/steal',
    '',
    'liveuser/User/QueryUser',
    '/liveuser',
    '/liveuser/',
    '/liveuser/User//QueryUser',
    '/liveuser/../admin/v1/user-list',
    '/liveuser/%2e%2e/admin',
    '/liveuser/.',
    '/liveuser\\..\\admin',
    '/liveuser/User/QueryUser?redirect=x',
    '/liveuser/User/QueryUser#x',
    '/admin/v1/user-list',
    '/healthz',
    undefined,
    42,
  ];
  for (const path of elsewhere) {
    const err = await h.rejection(client.call(path, {}));
    assert.ok(err instanceof LiveuserError, String(path));
    assert.equal(err.code, 'invalid_path', String(path));
    assert.equal(err.status, 0);
    assert.match(err.message, /\/liveuser\/User\/QueryUser/);
  }
  assert.equal(request.log.length, 0, 'nothing was sent, not even a login');

  assert.deepEqual(await client.call('/liveuser/User/QueryUser', { uids: ['nobody'] }), { users: [] });
  const err = await h.rejection(client.call('/liveuser/User/No_Such-Method2', {}));
  assert.equal(err.code, 'bad_route', 'a well-formed path goes to the server, which judges it');
});

test('an answer without liveuser\'s error body (a proxy\'s page) gets a code from its status', async () => {
  const intercept = (opts, send, path) => {
    if (path.endsWith('/QueryUser')) {
      return Promise.resolve({ status: 502, headers: { 'content-type': 'text/html' }, data: '<html>Bad Gateway</html>' });
    }
    return send(opts);
  };
  const { client } = newClient({ intercept });

  const err = await h.rejection(client.queryUser(['nobody']));

  assert.equal(err.code, 'unavailable');
  assert.equal(err.status, 502);
  assert.equal(err.retryAfter, undefined);
});

test('no token appears in an error, its text, or a console line', async () => {
  const captured = [];
  const methods = ['log', 'info', 'warn', 'error', 'debug', 'trace'];
  const saved = methods.map((m) => console[m]);
  methods.forEach((m) => {
    console[m] = (...args) => captured.push(util.format(...args));
  });
  const errors = [];
  const requests = [];
  const catchInto = (p) => p.then(() => assert.fail('expected a rejection'), (e) => errors.push(e));
  let shown;
  try {
    // An adapter whose own errors repeat the whole request, tokens included.
    const leaky = (opts) => Promise.reject(new Error(`failed to send ${JSON.stringify(opts)}`));

    const a = newClient();
    requests.push(a.request);
    await a.client.login();
    await catchInto(a.client.addUser({ name: 'n'.repeat(65) })); // invalid_argument
    await catchInto(a.client.addUser({ uid: 'someone-else', name: 'x' })); // permission_denied
    await catchInto(a.client.call('/liveuser/User/NoSuchMethod', {})); // bad_route

    const b = newClient({ storage: a.storage, user: a.user, intercept: h.refuseQueryUserToken });
    requests.push(b.request);
    await catchInto(b.client.queryUser(['nobody'])); // refused after a renewal

    const c = newClient({ storage: b.storage, user: a.user, intercept: (opts, send, path) => (path.endsWith('/QueryUser') ? leaky(opts) : send(opts)) });
    requests.push(c.request);
    await catchInto(c.client.queryUser(['nobody'])); // no answer, Bearer token in the adapter's error

    h.makeStale(c.storage);
    const d = newClient({ storage: c.storage, user: a.user, intercept: leaky });
    requests.push(d.request);
    await catchInto(d.client.queryUser(['nobody'])); // renewal lost twice, refresh token in the adapter's error

    const throwing = createClient({
      baseUrl: server.base,
      storage: d.storage,
      login: a.user.login,
      request: (opts) => {
        throw new Error(`cannot send ${JSON.stringify(opts)}`); // thrown, not rejected
      },
    });
    await catchInto(throwing.queryUser(['nobody']));

    const closed = newClient({ base: 'http://127.0.0.1:1' });
    await catchInto(closed.client.login()); // connection refused

    shown = [util.inspect(d.client), String(d.client), JSON.stringify(d.client)];
    console.log('client', d.client);
  } finally {
    methods.forEach((m, i) => {
      console[m] = saved[i];
    });
  }

  assert.deepEqual(
    errors.map((e) => e.code),
    ['invalid_argument', 'permission_denied', 'bad_route', 'unauthenticated', 'network', 'network', 'network', 'network']
  );
  const tokens = [];
  for (const r of requests) {
    for (const answer of r.answers) tokens.push(answer.access_token, answer.refresh_token);
  }
  assert.ok(tokens.length >= 4);
  const texts = errors
    .flatMap((e) => [String(e), e.message, e.msg, e.stack, JSON.stringify(e), util.inspect(e)])
    .concat(shown, captured);
  for (const text of texts) {
    for (const token of tokens) assert.ok(!text.includes(token), `a token in: ${text.replace(token, '<token>')}`);
    assert.ok(!/lvrt_|eyJ/.test(text), 'nothing that looks like a token either');
  }
});
