// Verifying liveuser's access tokens in a Node.js backend, offline, with the public keys
// of GET /.well-known/jwks.json and nothing but Node's built-in WebCrypto (Node 18+).
//
//   node examples/verify/verify.mjs https://api.example.com/.well-known/jwks.json "$TOKEN"
//   node examples/verify/verify.mjs ./jwks.json "$TOKEN"      # a saved copy of the JWKS
//
// Prints the claims and exits 0, or prints `refused: <reason>` and exits 1. In a service,
// keep one verifier (verifierFor) and call it per request. tests/e2e/verify_offline.rs
// runs this file against a real server.
//
// What it checks, and why:
// - alg must be ES256 and the kid one of the JWKS: the algorithm comes from the key, not
//   from the token (RFC 8725), so `none` or an HS256 token keyed with the public key
//   cannot pass;
// - the ES256 signature over header.payload, with the key of that kid;
// - iss, aud and exp (no leeway here; allow a few seconds if your clocks drift).
// A signature cannot tell that a session was revoked: for that, ask liveuser
// (/liveuser/Auth/Check), or accept that a revoked token lives until its exp (2 h).
//
// Rotation: liveuser publishes a new key token.key_publish_secs (15 min) before it signs,
// longer than the JWKS may be cached (5 min), so a copy refreshed every few minutes always
// has the key of a new token. A kid not in the copy is looked up again, at most once a
// minute, in case the operator skipped the wait (`token rotate-key --now`).

import { readFile } from 'node:fs/promises';
import { webcrypto } from 'node:crypto';

const { subtle } = webcrypto;

const ISSUER = process.env.LIVEUSER_ISSUER ?? 'liveuser';
const AUDIENCE = process.env.LIVEUSER_AUDIENCE ?? 'liveuser';

function base64url(text) {
  return Buffer.from(text, 'base64url');
}

async function loadJwks(source) {
  if (/^https?:\/\//.test(source)) {
    const response = await fetch(source);
    if (!response.ok) throw new Error(`the JWKS answered ${response.status}`);
    return response.json();
  }
  return JSON.parse(await readFile(source, 'utf8'));
}

/** A verifier for the JWKS at `source` (a URL, or a file holding a copy of it). */
export function verifierFor(source, { maxAgeMs = 300_000 } = {}) {
  let keys = new Map();
  let fetchedAt = 0;

  async function refresh() {
    const jwks = await loadJwks(source);
    const next = new Map();
    for (const jwk of jwks.keys ?? []) {
      if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || jwk.alg !== 'ES256') continue;
      const key = await subtle.importKey(
        'jwk',
        { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y },
        { name: 'ECDSA', namedCurve: 'P-256' },
        false,
        ['verify'],
      );
      next.set(jwk.kid, key);
    }
    keys = next;
    fetchedAt = Date.now();
  }

  async function keyFor(kid) {
    if (Date.now() - fetchedAt > maxAgeMs) await refresh();
    if (!keys.has(kid) && Date.now() - fetchedAt > 60_000) await refresh();
    return keys.get(kid);
  }

  /** The claims of `token`, or an Error saying why it is refused. */
  return async function verify(token) {
    const parts = token.split('.');
    if (parts.length !== 3) throw new Error('not a JWT');
    const [h, p, s] = parts;
    const header = JSON.parse(base64url(h).toString('utf8'));
    if (header.alg !== 'ES256') throw new Error(`alg ${JSON.stringify(header.alg)} is not ES256`);
    const key = await keyFor(header.kid);
    if (!key) throw new Error(`kid ${JSON.stringify(header.kid)} is not in the JWKS`);
    const ok = await subtle.verify(
      { name: 'ECDSA', hash: 'SHA-256' },
      key,
      base64url(s),
      Buffer.from(`${h}.${p}`, 'ascii'),
    );
    if (!ok) throw new Error('bad signature');
    const claims = JSON.parse(base64url(p).toString('utf8'));
    if (claims.iss !== ISSUER) throw new Error('wrong issuer');
    if (claims.aud !== AUDIENCE) throw new Error('wrong audience');
    if (!(Date.now() / 1000 < claims.exp)) throw new Error('expired');
    return claims;
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [source, token] = process.argv.slice(2);
  if (!source || !token) {
    console.error('usage: node verify.mjs <JWKS URL or file> <access token>');
    process.exit(2);
  }
  try {
    const claims = await verifierFor(source)(token);
    console.log(JSON.stringify(claims));
  } catch (e) {
    console.log(`refused: ${e.message}`);
    process.exit(1);
  }
}
