"""Verifying liveuser's access tokens in a Python backend, offline, with PyJWT and the
public keys of GET /.well-known/jwks.json (pip install 'pyjwt[crypto]').

    python3 examples/verify/verify.py https://api.example.com/.well-known/jwks.json "$TOKEN"
    python3 examples/verify/verify.py ./jwks.json "$TOKEN"     # a saved copy of the JWKS

Prints the claims and exits 0, or prints `refused: <reason>` and exits 1. In a service,
keep one jwt.PyJWKClient (it caches the JWKS) and call verify() per request.
tests/e2e/verify_offline.rs runs this file against a real server.

algorithms=["ES256"] pins the algorithm (RFC 8725): a token saying `none`, or HS256 keyed
with the public key, is refused whatever its header says. iss, aud and exp are checked.
A signature cannot tell that a session was revoked: ask liveuser (/liveuser/Auth/Check)
for that, or accept that a revoked token lives until its exp (2 h).

Rotation: liveuser publishes a new key token.key_publish_secs (15 min) before it signs,
longer than the JWKS may be cached (5 min, PyJWKClient's default lifespan too), so a
cached copy has the key of every new token; PyJWKClient fetches again for an unknown kid.
"""

import json
import os
import sys

import jwt

ISSUER = os.environ.get("LIVEUSER_ISSUER", "liveuser")
AUDIENCE = os.environ.get("LIVEUSER_AUDIENCE", "liveuser")


def signing_key(source, token):
    """The key of the token's kid, from the JWKS at a URL or in a file."""
    if source.startswith(("http://", "https://")):
        return jwt.PyJWKClient(source, lifespan=300).get_signing_key_from_jwt(token)
    with open(source, encoding="utf-8") as f:
        keys = jwt.PyJWKSet.from_dict(json.load(f))
    kid = jwt.get_unverified_header(token).get("kid")
    for key in keys.keys:
        if key.key_id == kid:
            return key
    raise jwt.InvalidTokenError(f"kid {kid!r} is not in the JWKS")


def verify(source, token):
    """The claims of `token`; raises jwt.InvalidTokenError when it is refused."""
    key = signing_key(source, token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        issuer=ISSUER,
        audience=AUDIENCE,
        options={"require": ["exp", "iss", "aud", "sub"]},
    )


def main():
    if len(sys.argv) != 3:
        print("usage: verify.py <JWKS URL or file> <access token>", file=sys.stderr)
        return 2
    try:
        claims = verify(sys.argv[1], sys.argv[2])
    except (jwt.InvalidTokenError, jwt.PyJWKClientError) as e:
        print(f"refused: {e}")
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
