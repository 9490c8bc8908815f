'use strict';
// Logging in, keeping the tokens, and the two user methods, against a real server.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const server = h.serverForFile();

function newClient(parts = {}) {
  return h.newClient(Object.assign({ base: server.base }, parts));
}

test('an authenticated call without tokens logs in first', async () => {
  const { client, request, user, storage } = newClient();
  assert.equal(client.uid, null);

  await client.addUser({ name: 'First' });

  assert.deepEqual(
    request.log.map((r) => r.path),
    ['/liveuser/Wx/Login', '/liveuser/User/AddUser']
  );
  assert.deepEqual(request.log[0].body, { code: user.codes[0] });
  assert.match(client.uid, /^[A-Za-z0-9_.-]+$/);
  assert.equal(h.stored(storage).uid, client.uid);
});

test('tokens are restored from storage: a new client on the same storage continues without a new login', async () => {
  const first = newClient();
  const { uid } = await first.client.login();

  const second = newClient({ user: first.user, storage: first.storage });
  assert.equal(second.client.uid, uid, 'the uid is known before any request');
  assert.deepEqual(await second.client.login(), { uid }, 'login() with tokens sends nothing');
  const users = await second.client.queryUser([uid]);

  assert.deepEqual(users.map((u) => u.uid), [uid]);
  assert.deepEqual(second.request.log.map((r) => r.path), ['/liveuser/User/QueryUser']);
  assert.equal(first.user.codes.length, 1, 'no second code was asked for');
});

test('concurrent calls that need a login share one Login', async () => {
  const { client, request, user } = newClient();

  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) => (i % 2 ? client.queryUser(['nobody']) : client.login()))
  );

  assert.equal(request.count('/Wx/Login'), 1);
  assert.equal(user.codes.length, 1);
  assert.equal(request.count('/User/QueryUser'), 10);
  for (const [i, r] of results.entries()) assert.deepEqual(r, i % 2 ? [] : { uid: client.uid });
});

test('addUser and queryUser round trip, and fields left out keep their values', async () => {
  const { client } = newClient();
  await client.addUser({ name: 'Alice', agent: 'iPhone', avatar: 'https://example.com/a.png' });
  await client.addUser({ name: 'Alice B.' });

  const users = await client.queryUser([client.uid, 'nobody']);

  assert.equal(users.length, 1);
  const [me] = users;
  assert.equal(me.uid, client.uid);
  assert.equal(me.name, 'Alice B.');
  assert.equal(me.agent, 'iPhone');
  assert.equal(me.avatar, 'https://example.com/a.png');
  assert.match(me.update_at, /^\d+$/);

  const viaCall = await client.call('/liveuser/User/QueryUser', { uids: [client.uid] });
  assert.deepEqual(viaCall, { users: [me] });
});

test('logout forgets the tokens here and in storage; the next call logs in again', async () => {
  const { client, storage, request, user } = newClient();
  const { uid } = await client.login();

  client.logout();

  assert.equal(client.uid, null);
  assert.equal(storage.get('liveuser'), '');
  assert.deepEqual(storage.writes.at(-1), ['liveuser', undefined]);
  const again = newClient({ user, storage });
  assert.equal(again.client.uid, null, 'a restart after logout is logged out');

  await client.queryUser([uid]);
  assert.equal(request.count('/Wx/Login'), 2);
  assert.equal(client.uid, uid, 'the same WeChat user comes back as the same uid');
});

test('storage only ever holds a complete pair from one answer of the server, under one key', async () => {
  const first = newClient();
  await first.client.login();
  // The app restarts with an expired access token: the new instance renews.
  h.makeStale(first.storage);
  const { client, storage, request } = newClient({ user: first.user, storage: first.storage });
  await client.queryUser(['nobody']);
  assert.equal(request.count('/Wx/RenewToken'), 1);
  // The session is revoked: the renewal is refused and the client logs in again.
  await server.cli('session', 'revoke', '--uid', client.uid);
  await client.queryUser(['nobody']);
  assert.equal(request.count('/Wx/Login'), 1);
  client.logout();

  const answers = first.request.answers.concat(request.answers);
  assert.equal(answers.length, 3, 'login, renewal, re-login');
  for (const [key, value] of storage.writes) {
    assert.equal(key, 'liveuser');
    if (value === undefined) continue;
    const state = JSON.parse(value);
    assert.ok(
      answers.some((a) => isDeepEqual(a, state)),
      'every stored value is exactly one answer of the server'
    );
  }
  // Login, renewal, the refused pair forgotten, re-login, logout.
  assert.deepEqual(
    storage.writes.map(([, v]) => (v === undefined ? 'removed' : 'pair')),
    ['pair', 'pair', 'removed', 'pair', 'removed']
  );
});

function isDeepEqual(a, b) {
  try {
    assert.deepStrictEqual(a, b);
    return true;
  } catch (e) {
    return false;
  }
}
