//! Attacks on access tokens, after RFC 8725 (JWT best current practice) and OWASP ASVS
//! V3 (session management): every forged, tampered, confused, stale or misplaced token
//! is `unauthenticated`, and every refusal carries the same message, so the answer is
//! no oracle for which check failed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Sha256, Sha384, Sha512};

use crate::common::{TestApp, jwt_claims};

const SECRET: &str = "an-hs256-attack-secret-of-32-bytes!";
const OTHER_KEY: &str = "an-attackers-own-key-of-32-bytes!!!";

fn app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.token.secret = liveuser::secret::Secret::new(SECRET.into());
        c.token.max_sessions_per_user = 2;
    })
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A header as liveuser writes it: `typ`, `alg`, `kid` in that order. The server accepts
/// only the exact bytes it writes, so a genuine header must be encoded the same way; any
/// other header is encoded as given (serde_json orders its keys).
fn encode_header(header: &Value) -> String {
    let genuine = header.as_object().is_some_and(|h| {
        h.len() == 3 && h["typ"] == "JWT" && h["alg"] == "HS256" && h["kid"].is_string()
    });
    if genuine {
        let text = format!(r#"{{"typ":"JWT","alg":"HS256","kid":{}}}"#, header["kid"]);
        URL_SAFE_NO_PAD.encode(text)
    } else {
        b64(header)
    }
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A JWT with exactly this header and these claims, MAC'd with `alg` ("HS256", "HS384",
/// "HS512") under `key` — whatever the header says.
fn sign(header: &Value, claims: &Value, mac_alg: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", encode_header(header), b64(claims));
    let sig = match mac_alg {
        "HS256" => mac::<Hmac<Sha256>>(key, &input),
        "HS384" => mac::<Hmac<Sha384>>(key, &input),
        "HS512" => mac::<Hmac<Sha512>>(key, &input),
        other => panic!("no MAC {other}"),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn mac<M: Mac + KeyInit>(key: &[u8], input: &str) -> Vec<u8> {
    let mut m = <M as KeyInit>::new_from_slice(key).unwrap();
    m.update(input.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn with(value: &Value, field: &str, v: Value) -> Value {
    let mut out = value.clone();
    out[field] = v;
    out
}

fn without(value: &Value, field: &str) -> Value {
    let mut out = value.clone();
    out.as_object_mut().unwrap().remove(field);
    out
}

/// Asserts every case is refused with one and the same message.
#[track_caller]
fn all_refused(app: &TestApp, cases: Vec<(&str, String)>) {
    let mut messages = std::collections::BTreeSet::new();
    for (name, token) in cases {
        let r = app.query(&token, &[]);
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthenticated"),
            "attack '{name}' was not refused: {}",
            r.text
        );
        r.assert_error(401, "unauthenticated");
        messages.insert(r.str("msg"));
    }
    assert_eq!(messages.len(), 1, "refusals differ: {messages:?}");
}

#[test]
fn forged_confused_and_tampered_tokens_are_all_refused_alike() {
    let app = app();
    let me = app.login_ok("alice");
    let token = me.str("access_token");
    let header = header_of(&token);
    let claims = jwt_claims(&token);
    let key = SECRET.as_bytes();
    let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();

    // The control: this machinery, with the real key and real claims, is accepted.
    let control = sign(&header, &claims, "HS256", key);
    assert_eq!(
        app.query(&control, &[]).status,
        200,
        "the forgery kit is sound"
    );

    let other = app.login_ok("bob");
    let bob_uid = other.str("uid");
    let now = claims["iat"].as_u64().unwrap();

    let none = with(&header, "alg", json!("none"));
    // The genuine header with its keys in another order, MAC'd with the real key: only
    // the exact bytes the server writes are accepted.
    let reordered = {
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = mac::<Hmac<Sha256>>(key, &input);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    assert_ne!(
        reordered.split('.').next(),
        Some(h),
        "the reordering changed the bytes"
    );
    let cases = vec![
        ("genuine header reordered, real key", reordered),
        // RFC 8725 §2.1 / §3.1: alg=none and algorithm confusion.
        ("alg none, no signature", format!("{}.{p}.", b64(&none))),
        ("alg none, old signature", format!("{}.{p}.{s}", b64(&none))),
        (
            "alg None (case)",
            format!("{}.{p}.", b64(&with(&header, "alg", json!("None")))),
        ),
        (
            "alg NONE (case)",
            format!("{}.{p}.", b64(&with(&header, "alg", json!("NONE")))),
        ),
        (
            "alg HS384 with the right key",
            sign(&with(&header, "alg", json!("HS384")), &claims, "HS384", key),
        ),
        (
            "alg HS512 with the right key",
            sign(&with(&header, "alg", json!("HS512")), &claims, "HS512", key),
        ),
        (
            "alg RS256 header, HMAC by the key (key used as an RSA public key)",
            sign(&with(&header, "alg", json!("RS256")), &claims, "HS256", key),
        ),
        (
            "alg ES256 header, HMAC by the key",
            sign(&with(&header, "alg", json!("ES256")), &claims, "HS256", key),
        ),
        (
            "alg PS256 header, original signature",
            format!("{}.{p}.{s}", b64(&with(&header, "alg", json!("PS256")))),
        ),
        (
            "alg missing",
            sign(&without(&header, "alg"), &claims, "HS256", key),
        ),
        // Wrong keys and key selection.
        (
            "wrong key",
            sign(&header, &claims, "HS256", OTHER_KEY.as_bytes()),
        ),
        ("empty key", sign(&header, &claims, "HS256", b"")),
        (
            "attacker key embedded as jwk",
            sign(
                &with(
                    &header,
                    "jwk",
                    json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(OTHER_KEY)}),
                ),
                &claims,
                "HS256",
                OTHER_KEY.as_bytes(),
            ),
        ),
        (
            "attacker key by jku",
            sign(
                &with(&header, "jku", json!("http://127.0.0.1:9/keys.json")),
                &claims,
                "HS256",
                OTHER_KEY.as_bytes(),
            ),
        ),
        (
            "right key, no kid",
            sign(&without(&header, "kid"), &claims, "HS256", key),
        ),
        (
            "right key, unknown kid",
            sign(
                &with(&header, "kid", json!("0123456789abcdef")),
                &claims,
                "HS256",
                key,
            ),
        ),
        (
            "kid path traversal",
            sign(
                &with(&header, "kid", json!("../../../../dev/null")),
                &claims,
                "HS256",
                b"",
            ),
        ),
        // Tampering with a genuine token.
        (
            "tampered header (typ), old signature",
            format!("{}.{p}.{s}", b64(&with(&header, "typ", json!("at+jwt")))),
        ),
        (
            "tampered sub, old signature",
            format!("{h}.{}.{s}", b64(&with(&claims, "sub", json!(bob_uid)))),
        ),
        (
            "tampered exp, old signature",
            format!(
                "{h}.{}.{s}",
                b64(&with(&claims, "exp", json!(now + 999_999)))
            ),
        ),
        ("signature stripped", format!("{h}.{p}.")),
        ("signature truncated", token[..token.len() - 3].to_string()),
        (
            "signature of another token",
            format!(
                "{h}.{p}.{}",
                other.str("access_token").rsplit('.').next().unwrap()
            ),
        ),
        ("payload only", p.to_string()),
        ("five parts (JWE shape)", format!("{h}.{p}.{s}.{s}.{s}")),
        ("whitespace inside", format!("{h}. {p}.{s}")),
        ("not a JWT", "garbage".to_string()),
        // Claims, signed with the right key (as a key-holder's bug would).
        (
            "iss missing",
            sign(&header, &without(&claims, "iss"), "HS256", key),
        ),
        (
            "iss wrong",
            sign(&header, &with(&claims, "iss", json!("evil")), "HS256", key),
        ),
        (
            "aud missing",
            sign(&header, &without(&claims, "aud"), "HS256", key),
        ),
        (
            "aud wrong",
            sign(
                &header,
                &with(&claims, "aud", json!("another-api")),
                "HS256",
                key,
            ),
        ),
        (
            "sub missing",
            sign(&header, &without(&claims, "sub"), "HS256", key),
        ),
        (
            "sub of another user on my session",
            sign(&header, &with(&claims, "sub", json!(bob_uid)), "HS256", key),
        ),
        (
            "sid missing",
            sign(&header, &without(&claims, "sid"), "HS256", key),
        ),
        (
            "sid unknown",
            sign(
                &header,
                &with(&claims, "sid", json!("00000000000000000000000000000000")),
                "HS256",
                key,
            ),
        ),
        (
            "exp missing",
            sign(&header, &without(&claims, "exp"), "HS256", key),
        ),
        (
            "exp as a string",
            sign(
                &header,
                &with(&claims, "exp", json!((now + 60).to_string())),
                "HS256",
                key,
            ),
        ),
        (
            "nbf in the future",
            sign(
                &header,
                &with(&claims, "nbf", json!(now + 3600)),
                "HS256",
                key,
            ),
        ),
        (
            "expired 1 s ago",
            sign(&header, &with(&claims, "exp", json!(now - 1)), "HS256", key),
        ),
        (
            "expired 20 s ago (inside other servers' leeway; liveuser has none)",
            sign(
                &header,
                &with(&claims, "exp", json!(now - 20)),
                "HS256",
                key,
            ),
        ),
        (
            "expired exactly now",
            sign(&header, &with(&claims, "exp", json!(now)), "HS256", key),
        ),
        // Tokens of the wrong kind.
        ("refresh token as Bearer", me.str("refresh_token")),
        ("empty token", String::new()),
    ];
    all_refused(&app, cases);

    // A past nbf is fine: the check is of the time, not of the claim's presence.
    let past_nbf = sign(&header, &with(&claims, "nbf", json!(now - 5)), "HS256", key);
    assert_eq!(app.query(&past_nbf, &[]).status, 200);
}

#[test]
fn tokens_of_revoked_evicted_and_reused_sessions_are_refused_at_once() {
    let app = app();
    // Evicted: max_sessions_per_user is 2, so a third login evicts the first.
    // (A second apart: sessions are ordered by their creation second.)
    let first = app.login_ok("carol").str("access_token");
    app.advance(1);
    let second = app.login_ok("carol");
    assert_eq!(app.query(&first, &[]).status, 200);
    app.advance(1);
    let _third = app.login_ok("carol");

    // Revoked by reuse detection: a rotated refresh token presented after grace.
    let r1 = app.renew(&second.str("refresh_token"));
    assert_eq!(r1.status, 200);
    let _r2 = app.renew(&r1.str("refresh_token"));
    let reuse = app.renew(&second.str("refresh_token"));
    reuse.assert_error(401, "unauthenticated");

    // Revoked by the operator.
    let dan = app.login_ok("dan").str("access_token");
    let sid = liveuser::model::Sid::parse(jwt_claims(&dan)["sid"].as_str().unwrap()).unwrap();
    app.block_on(liveuser::store::Store::revoke_sessions(
        app.service().store().as_ref(),
        &[sid],
    ))
    .unwrap();

    all_refused(
        &app,
        vec![
            ("evicted session", first),
            ("session revoked by reuse", second.str("access_token")),
            ("successor access token after reuse", r1.str("access_token")),
            ("session revoked by the operator", dan),
        ],
    );
}

#[test]
fn an_expired_token_is_refused_without_leeway() {
    let app = app();
    let token = app.login_ok("erin").str("access_token");
    let exp = jwt_claims(&token)["exp"].as_u64().unwrap();
    app.set_clock(exp - 1);
    assert_eq!(app.query(&token, &[]).status, 200, "one second before exp");
    app.set_clock(exp);
    all_refused(&app, vec![("at exp", token.clone())]);
    app.set_clock(exp + 29);
    all_refused(&app, vec![("29 s past exp", token)]);
}

#[test]
fn the_authorization_header_must_be_exactly_one_bearer_and_one_space() {
    let app = app();
    let token = app.login_ok("fay").str("access_token");
    let body = json!({"uids": []}).to_string();
    let ct = ("content-type", "application/json".to_string());
    let ask = |values: &[String]| {
        let mut headers = vec![ct.clone()];
        for v in values {
            headers.push(("authorization", v.clone()));
        }
        app.raw(
            "POST",
            "/liveuser/User/QueryUser",
            &headers,
            body.as_bytes(),
        )
    };
    assert_eq!(ask(&[format!("Bearer {token}")]).status, 200);
    // Whitespace around a field value is not part of it (RFC 9110 §5.5), so
    // " Bearer <token> " is the exact form and is accepted, as any HTTP server would.
    assert_eq!(ask(&[format!(" Bearer {token} ")]).status, 200);

    let variants = [
        vec![],
        vec![token.clone()],
        vec![format!("bearer {token}")],
        vec![format!("BEARER {token}")],
        vec![format!("BeArEr {token}")],
        vec![format!("Bearer  {token}")],
        vec![format!("Bearer\t{token}")],
        vec![format!("Bearer {token}, Bearer {token}")],
        vec![format!("Bearer:{token}")],
        vec![format!("Bearer={token}")],
        vec![format!("Basic {token}")],
        vec![format!("Token {token}")],
        vec!["Bearer".to_string()],
        vec!["Bearer ".to_string()],
        // Two Authorization headers are ambiguous (a proxy may read the other one).
        vec![format!("Bearer {token}"), format!("Bearer {token}")],
        vec![format!("Bearer {token}"), "Bearer garbage".to_string()],
    ];
    let mut messages = std::collections::BTreeSet::new();
    for values in variants {
        let r = ask(&values);
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthenticated"),
            "{values:?}: {}",
            r.text
        );
        messages.insert(r.str("msg"));
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
}

#[test]
fn an_oversized_token_is_refused_without_a_server_error() {
    let app = app();
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(20_000),
        "b".repeat(20_000),
        "c".repeat(100)
    );
    let r = app.query(&huge, &[]);
    r.assert_error(401, "unauthenticated");
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    forged_confused_and_tampered_tokens_are_all_refused_alike,
    tokens_of_revoked_evicted_and_reused_sessions_are_refused_at_once,
    an_expired_token_is_refused_without_leeway,
    the_authorization_header_must_be_exactly_one_bearer_and_one_space,
    an_oversized_token_is_refused_without_a_server_error,
);
