'use strict';
// The header a mini-program sends to its own backends, and how a backend checks it.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const server = h.serverForFile();

test('authorization() is the Bearer header that liveuser\'s Auth/Check accepts for this user', async () => {
  const { client, request } = h.newClient({ base: server.base });
  const header = await client.authorization();
  assert.match(header, /^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  assert.deepEqual(request.log.map((r) => r.path), ['/liveuser/Wx/Login'], 'logged in first');

  const checked = await fetch(`${server.base}/liveuser/Auth/Check`, {
    headers: { authorization: header },
  });
  assert.equal(checked.status, 200);
  assert.equal(checked.headers.get('x-liveuser-uid'), client.uid);
  assert.equal((await checked.json()).uid, client.uid);

  assert.equal(await client.authorization(), header, 'the same token while it is fresh');
  assert.equal(request.count('/Wx/Login'), 1);
});

test('authorization() renews an access token close to its expiry, as a call would', async () => {
  const first = h.newClient({ base: server.base });
  const before = await first.client.authorization();
  h.makeStale(first.storage);
  const again = h.newClient({ base: server.base, user: first.user, storage: first.storage });

  const after = await again.client.authorization();
  assert.notEqual(after, before);
  assert.deepEqual(again.request.log.map((r) => r.path), ['/liveuser/Wx/RenewToken']);
});
