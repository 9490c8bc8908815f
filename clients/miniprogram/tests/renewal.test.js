'use strict';
// Renewal, re-login and their single flight, against a real server with rotation on
// (the default) and its 10 s reuse grace window.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { LiveuserError, fetchRequest } = require('..');
const h = require('./harness');

const server = h.serverForFile();

function newClient(parts = {}) {
  return h.newClient(Object.assign({ base: server.base }, parts));
}

/** A logged-in user's storage, written by a first client (the app's previous run). */
async function loggedIn() {
  const first = newClient();
  await first.client.login();
  return { user: first.user, storage: first.storage, state: h.stored(first.storage) };
}

/** Storage of a logged-in user whose access token the server refuses, its refresh token still good. */
async function refusedAccessToken() {
  const { user, storage, state } = await loggedIn();
  const [head, payload] = state.access_token.split('.');
  storage.map.set('liveuser', JSON.stringify(Object.assign({}, state, { access_token: `${head}.${payload}.AAAA` })));
  return { user, storage, state };
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

test('20 concurrent calls with an expired access token make exactly one RenewToken', async () => {
  const { user, storage, state } = await loggedIn();
  h.makeStale(storage);
  const { client, request } = newClient({ user, storage });

  const results = await Promise.all(Array.from({ length: 20 }, () => client.queryUser([state.uid])));

  assert.equal(request.count('/Wx/RenewToken'), 1);
  assert.deepEqual(request.log[0].body, { refresh_token: state.refresh_token });
  assert.equal(request.count('/Wx/Login'), 0);
  assert.equal(request.count('/User/QueryUser'), 20);
  for (const users of results) assert.equal(users[0].uid, state.uid);
  const renewed = h.stored(storage);
  assert.notEqual(renewed.refresh_token, state.refresh_token, 'rotated');
  assert.ok(renewed.expiry > Date.now() / 1000 + 3600);

  await client.queryUser([state.uid]);
  assert.equal(request.count('/Wx/RenewToken'), 1, 'a fresh token is not renewed again');
});

test('a 401 on a call renews once and retries it; 20 concurrent 401s share the renewal', async () => {
  // An access token the server refuses (as after a change of its signing secret) with
  // a refresh token it still accepts.
  const { user, storage, state } = await refusedAccessToken();
  const { client, request } = newClient({ user, storage });

  await client.queryUser([state.uid]);
  assert.deepEqual(
    request.log.map((r) => `${r.path} ${r.status}`),
    ['/liveuser/User/QueryUser 401', '/liveuser/Wx/RenewToken 200', '/liveuser/User/QueryUser 200']
  );

  const [head, payload] = state.access_token.split('.');
  storage.map.set('liveuser', JSON.stringify(Object.assign({}, h.stored(storage), { access_token: `${head}.${payload}.BBBB` })));
  const again = newClient({ user, storage });
  const results = await Promise.all(Array.from({ length: 20 }, () => again.client.queryUser([state.uid])));
  assert.equal(results.length, 20);
  assert.equal(again.request.count('/Wx/RenewToken'), 1);
  assert.equal(again.request.count('/User/QueryUser'), 40, 'each call once refused, once retried');
  assert.equal(again.request.count('/Wx/Login'), 0);
});

test('a call started while a renewal is in progress waits for it instead of sending the refused token', async () => {
  const { user, storage, state } = await refusedAccessToken();
  const renewalSent = deferred();
  const release = deferred();
  const intercept = async (opts, send, path) => {
    if (path.endsWith('/RenewToken')) {
      renewalSent.resolve();
      await release.promise;
    }
    return send(opts);
  };
  const { client, request } = newClient({ user, storage, intercept });

  const first = client.queryUser([state.uid]);
  await renewalSent.promise;
  const second = client.queryUser([state.uid]);
  release.resolve();
  await Promise.all([first, second]);

  assert.deepEqual(
    request.log.map((r) => `${r.path} ${r.status}`),
    [
      '/liveuser/User/QueryUser 401',
      '/liveuser/Wx/RenewToken 200',
      '/liveuser/User/QueryUser 200',
      '/liveuser/User/QueryUser 200',
    ]
  );
});

test('a refusal that arrives after another call renewed is retried with the new tokens, without a second renewal', async () => {
  const { user, storage, state } = await refusedAccessToken();
  const release = deferred();
  let queries = 0;
  const intercept = async (opts, send, path) => {
    // Counted when sent: the first call's refusal is slow to arrive, it comes after the
    // second call has renewed and succeeded.
    const slow = path.endsWith('/QueryUser') && ++queries === 1;
    const res = await send(opts);
    if (slow) await release.promise;
    return res;
  };
  const { client, request } = newClient({ user, storage, intercept });

  const slow = client.queryUser([state.uid]);
  await client.queryUser([state.uid]);
  release.resolve();
  await slow;

  assert.equal(request.count('/Wx/RenewToken'), 1);
  assert.equal(request.count('/User/QueryUser'), 4, 'each call refused once and retried once');
  assert.equal(request.count('/Wx/Login'), 0);
});

test('a session revoked with `liveuser session revoke --uid` leads to one transparent re-login', async () => {
  const { client, request, user } = newClient();
  const { uid } = await client.login();
  await client.addUser({ name: 'Before' });

  await server.cli('session', 'revoke', '--uid', uid);
  const results = await Promise.all(Array.from({ length: 10 }, () => client.queryUser([uid])));

  for (const users of results) assert.equal(users[0].name, 'Before');
  assert.equal(request.count('/Wx/RenewToken'), 1, 'one renewal, refused');
  assert.equal(request.log.find((r) => r.path.endsWith('/RenewToken')).status, 401);
  assert.equal(request.count('/Wx/Login'), 2, 'the first login and one re-login');
  assert.equal(user.codes.length, 2, 'the re-login used a fresh code');
  assert.equal(client.uid, uid);
});

/** RenewToken with `refreshToken`, sent by someone other than the client (a thief with a copy). */
function renewElsewhere(base, refreshToken) {
  return fetchRequest({
    url: `${base}/liveuser/Wx/RenewToken`,
    method: 'POST',
    data: { refresh_token: refreshToken },
  });
}

test('a renewal refused as reuse (the token was renewed elsewhere) leads to one transparent re-login', async () => {
  const { user, storage, state } = await loggedIn();
  // A copy of the stored refresh token is renewed elsewhere, and its successor too: the
  // client's token is now an older token of its session, which the server takes for
  // theft, revoking the whole session.
  const stolen = await renewElsewhere(server.base, state.refresh_token);
  assert.equal(stolen.status, 200);
  const next = await renewElsewhere(server.base, stolen.data.refresh_token);
  assert.equal(next.status, 200);
  h.makeStale(storage);
  const { client, request } = newClient({ user, storage });

  const results = await Promise.all(Array.from({ length: 5 }, () => client.queryUser([state.uid])));

  for (const users of results) assert.equal(users[0].uid, state.uid);
  const renewals = request.log.filter((r) => r.path.endsWith('/RenewToken'));
  assert.deepEqual(
    renewals.map((r) => `${r.body.refresh_token === state.refresh_token} ${r.status}`),
    ['true 401'],
    'one renewal, with the stored token, refused'
  );
  assert.equal(request.count('/Wx/Login'), 1, 'one re-login for the five calls');
  assert.equal(user.codes.length, 2, 'the re-login used a fresh code');
  assert.equal(request.count('/User/QueryUser'), 5);
  assert.equal(client.uid, state.uid, 'the same user');
  assert.deepEqual(h.stored(storage), request.answers[0], 'the new login is stored');
  // It was reuse, not a plain refusal: the session it hit is revoked, the thief's
  // newest token included.
  const thief = await renewElsewhere(server.base, next.data.refresh_token);
  assert.equal(thief.status, 401);
});

test('a session ended by a login on another device leads to one transparent re-login', async () => {
  // At most one session per user: a login elsewhere revokes the client's session, its
  // access token and refresh token both.
  const capped = await h.startServer({ token: { max_sessions_per_user: 1 } });
  try {
    const user = h.mockUser();
    const { client, request } = h.newClient({ base: capped.base, user });
    const { uid } = await client.login();
    const elsewhere = h.newClient({ base: capped.base, user });
    assert.deepEqual(await elsewhere.client.login(), { uid });

    const users = await client.queryUser([uid]);

    assert.equal(users[0].uid, uid);
    assert.deepEqual(
      request.log.map((r) => `${r.path} ${r.status}`),
      [
        '/liveuser/Wx/Login 200',
        '/liveuser/User/QueryUser 401',
        '/liveuser/Wx/RenewToken 401',
        '/liveuser/Wx/Login 200',
        '/liveuser/User/QueryUser 200',
      ]
    );
    assert.equal(user.codes.length, 3, 'a code for each login: here, elsewhere, the re-login');
    assert.equal(client.uid, uid);
  } finally {
    await capped.stop();
  }
});

test('a renewal answer lost on the network is recovered with the same refresh token, without logging out', async () => {
  let lost = 0;
  // The server answers the first RenewToken (so it rotates), then the answer is lost.
  const intercept = async (opts, send, path) => {
    const res = await send(opts);
    if (path.endsWith('/RenewToken') && lost === 0) {
      lost += 1;
      throw new Error('socket hang up');
    }
    return res;
  };
  // renewBeforeSecs above the access token's 2 h lifetime: every call renews first.
  const { client, request, user } = newClient({ intercept, renewBeforeSecs: 86400 });
  const { uid } = await client.login();
  const x = request.answers[0].refresh_token;

  await client.queryUser([uid]);
  const renewals = request.log.filter((r) => r.path.endsWith('/RenewToken'));
  assert.deepEqual(
    renewals.map((r) => r.body.refresh_token),
    [x, x],
    'retried with the same refresh token'
  );
  assert.ok(
    request.answers[1].refresh_token === request.answers[2].refresh_token,
    'the grace window gave the same successor'
  );
  const successor = request.answers[2].refresh_token;

  // The session goes on: the next renewal, with the successor, is accepted.
  await client.queryUser([uid]);
  const last = request.log.filter((r) => r.path.endsWith('/RenewToken')).at(-1);
  assert.deepEqual(last.body, { refresh_token: successor });
  assert.equal(last.status, 200);
  assert.equal(request.count('/Wx/Login'), 1, 'never logged in again');
  assert.equal(user.codes.length, 1);
  assert.equal(client.uid, uid);
});

test('a renewal whose answer never comes is given up after the timeout and retried with the same refresh token inside the grace window', { timeout: 30000 }, async (t) => {
  // A 2 s grace window, and a client that waits 1 s for an answer: the retry must reach
  // the server while it still takes it for a retry.
  const graced = await h.startServer({ token: { reuse_grace_secs: 2 } });
  t.after(() => graced.stop());
  const proxy = await h.lossyProxy(graced.base, /^POST \/liveuser\/Wx\/RenewToken /);
  t.after(() => proxy.close());
  // renewBeforeSecs above the access token's 2 h lifetime: every call renews first.
  const { client, request, user } = h.newClient({ base: proxy.base, renewBeforeSecs: 86400, timeoutMs: 1000 });
  const { uid } = await client.login();
  const x = request.answers[0].refresh_token;

  const started = Date.now();
  await client.queryUser([uid]);

  const renewals = request.log.filter((r) => r.path.endsWith('/RenewToken'));
  assert.deepEqual(
    renewals.map((r) => [r.body.refresh_token === x, r.status]),
    [
      [true, undefined],
      [true, 200],
    ],
    'the lost renewal, then its retry with the same token'
  );
  assert.ok(Date.now() - started >= 1000, 'the first answer was waited for');
  // The server rotated on the lost request; the retry got the successor it had sent.
  assert.equal(proxy.lost.length, 1);
  const successor = h.jsonBodyOf(proxy.lost[0]).refresh_token;
  assert.equal(request.answers[1].refresh_token, successor);

  // The session goes on with that successor: no reuse was detected, no re-login.
  await client.queryUser([uid]);
  const last = request.log.filter((r) => r.path.endsWith('/RenewToken')).at(-1);
  assert.deepEqual([last.body, last.status], [{ refresh_token: successor }, 200]);
  assert.equal(request.count('/Wx/Login'), 1);
  assert.equal(user.codes.length, 1);
});

test('a login answer lost on the network is retried with the same code', async () => {
  let lost = false;
  const intercept = async (opts, send, path) => {
    const res = await send(opts);
    if (path.endsWith('/Login') && !lost) {
      lost = true;
      throw new Error('socket hang up');
    }
    return res;
  };
  const { client, request, user, storage } = newClient({ intercept });

  const users = await client.queryUser(['nobody']);

  assert.deepEqual(users, []);
  assert.equal(user.codes.length, 1);
  const logins = request.log.filter((r) => r.path.endsWith('/Login'));
  assert.deepEqual(logins.map((r) => r.body.code), [user.codes[0], user.codes[0]]);
  assert.equal(h.stored(storage).uid, request.answers[1].uid);
});

test('a call refused again after a renewal reaches the caller as a LiveuserError', async () => {
  const { client, request } = newClient({ intercept: h.refuseQueryUserToken });
  await client.login();

  const err = await h.rejection(client.queryUser(['nobody']));

  assert.ok(err instanceof LiveuserError);
  assert.equal(err.code, 'unauthenticated');
  assert.equal(err.status, 401);
  assert.equal(err.message, err.msg);
  assert.equal(request.count('/User/QueryUser'), 2, 'retried once, not in a loop');
  assert.equal(request.count('/Wx/RenewToken'), 1);
  assert.equal(request.count('/Wx/Login'), 1);
  assert.notEqual(client.uid, null, 'still logged in: the session itself is fine');
});

test('a call refused again after a re-login reaches the caller as a LiveuserError', async () => {
  const { client, request } = newClient({ intercept: h.refuseQueryUserToken });
  const { uid } = await client.login();
  await server.cli('session', 'revoke', '--uid', uid);

  await assert.rejects(client.queryUser(['nobody']), { name: 'LiveuserError', code: 'unauthenticated', status: 401 });

  assert.deepEqual(
    request.log.map((r) => `${r.path} ${r.status}`),
    [
      '/liveuser/Wx/Login 200',
      '/liveuser/User/QueryUser 401',
      '/liveuser/Wx/RenewToken 401',
      '/liveuser/Wx/Login 200',
      '/liveuser/User/QueryUser 401',
    ]
  );
});

test('a device clock hours ahead of the server does not make every call renew', async () => {
  const realNow = Date.now;
  Date.now = () => realNow() + 8 * 3600 * 1000; // a phone set 8 h ahead (wrong time zone)
  try {
    const { client, request } = newClient();
    await client.login();
    for (let i = 0; i < 5; i += 1) await client.queryUser(['nobody']);
    assert.equal(request.count('/Wx/RenewToken'), 0);
  } finally {
    Date.now = realNow;
  }
});
