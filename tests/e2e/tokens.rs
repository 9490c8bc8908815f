//! Access tokens: every malformed, forged or stale token is `unauthenticated`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{Reply, TestApp, jwt_claims};

const SECRET: &str = "an-hs256-test-secret-of-32-bytes!!";

fn app() -> TestApp {
    TestApp::spawn_with(|c| c.token.secret = liveuser::secret::Secret::new(SECRET.into()))
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Signs `claims` with `key`, with the kid of a real token.
fn forge(real: &str, claims: &Value, key: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = header_of(real)["kid"].as_str().map(String::from);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key).unwrap()).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[track_caller]
fn refused(r: Reply) -> String {
    r.assert_error(401, "unauthenticated");
    r.str("msg")
}

#[test]
fn a_valid_token_is_accepted_and_forged_ones_are_not() {
    let app = app();
    let me = app.login_ok("alice");
    let token = me.str("access_token");
    let uid = me.str("uid");
    assert_eq!(app.query(&token, &[&uid]).status, 200);

    let claims = jwt_claims(&token);
    let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();

    let mut none_header = header_of(&token);
    none_header["alg"] = json!("none");
    let alg_none = format!("{}.{p}.", b64(&none_header));
    let alg_none_sig = format!("{}.{p}.{s}", b64(&none_header));

    let mut other_user = claims.clone();
    other_user["sub"] = json!("someone-else");
    let tampered = format!("{h}.{}.{s}", b64(&other_user));

    let mut later = claims.clone();
    later["exp"] = json!(claims["exp"].as_u64().unwrap() + 86400);
    let extended = format!("{h}.{}.{s}", b64(&later));

    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("another-issuer");
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut unknown_sid = claims.clone();
    unknown_sid["sid"] = json!("00000000000000000000000000000000");

    let cases = vec![
        ("garbage", "garbage".to_string()),
        ("empty segments", "..".to_string()),
        ("alg=none without signature", alg_none),
        ("alg=none with signature", alg_none_sig),
        ("tampered sub", tampered),
        ("tampered exp", extended),
        (
            "wrong key",
            forge(&token, &claims, b"a-different-key-of-32-bytes-long!!"),
        ),
        (
            "wrong aud (right key)",
            forge(&token, &wrong_aud, SECRET.as_bytes()),
        ),
        (
            "wrong iss (right key)",
            forge(&token, &wrong_iss, SECRET.as_bytes()),
        ),
        (
            "no exp (right key)",
            forge(&token, &no_exp, SECRET.as_bytes()),
        ),
        (
            "unknown session (right key)",
            forge(&token, &unknown_sid, SECRET.as_bytes()),
        ),
        ("refresh token as access token", me.str("refresh_token")),
        ("truncated signature", token[..token.len() - 2].to_string()),
    ];
    let mut messages = Vec::new();
    for (name, bad) in cases {
        let r = app.query(&bad, &[&uid]);
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthenticated"),
            "{name}: {}",
            r.text
        );
        messages.push(refused(r));
    }
    // One message for all: the answer says nothing about which check failed.
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");

    // Right key, right claims: the forgery machinery itself is sound.
    let control = forge(&token, &claims, SECRET.as_bytes());
    assert_eq!(app.query(&control, &[&uid]).status, 200);
}

#[test]
fn a_missing_or_malformed_authorization_header_is_unauthenticated() {
    let app = app();
    let token = app.login_ok("bob").str("access_token");
    let body = json!({"uids": []}).to_string();
    let ct = ("content-type", "application/json".to_string());
    let variants = [
        None,
        Some(token.clone()),
        Some(format!("Basic {token}")),
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some(format!("Bearer  {token}")),
        Some(format!("bearer {token}")),
        Some(format!("Bearer {token} x")),
    ];
    for value in variants {
        let mut headers = vec![ct.clone()];
        if let Some(v) = &value {
            headers.push(("authorization", v.clone()));
        }
        let r = app.raw(
            "POST",
            "/liveuser/User/QueryUser",
            &headers,
            body.as_bytes(),
        );
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthenticated"),
            "{value:?}: {}",
            r.text
        );
    }
}

#[test]
fn an_expired_token_is_refused() {
    let app = app();
    let me = app.login_ok("carol");
    let token = me.str("access_token");
    let exp = jwt_claims(&token)["exp"].as_u64().unwrap();
    app.set_clock(exp - 1);
    assert_eq!(app.query(&token, &[]).status, 200);
    app.set_clock(exp);
    refused(app.query(&token, &[]));
    refused(app.add_user(&token, json!({"name": "x"})));
}

#[test]
fn a_token_of_a_revoked_session_is_refused_at_once() {
    let app = app();
    let me = app.login_ok("dan");
    let token = me.str("access_token");
    let sid = liveuser::model::Sid::parse(jwt_claims(&token)["sid"].as_str().unwrap()).unwrap();
    app.block_on(liveuser::store::Store::revoke_sessions(
        app.service().store().as_ref(),
        &[sid],
    ))
    .unwrap();
    refused(app.query(&token, &[]));
}

#[test]
fn tokens_signed_under_another_configured_secret_are_refused_after_a_restart() {
    let mut app = app();
    let token = app.login_ok("erin").str("access_token");
    app.config.token.secret =
        liveuser::secret::Secret::new("a-completely-new-secret-32-bytes!!".into());
    app.restart();
    refused(app.query(&token, &[]));
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    a_valid_token_is_accepted_and_forged_ones_are_not,
    a_missing_or_malformed_authorization_header_is_unauthenticated,
    an_expired_token_is_refused,
    a_token_of_a_revoked_session_is_refused_at_once,
    tokens_signed_under_another_configured_secret_are_refused_after_a_restart,
);
