//! `/liveuser/Auth/Check`, the access check that proxies (nginx `auth_request`, Traefik
//! `ForwardAuth`, Caddy `forward_auth`) and backends without a JWT library call: any
//! method, the uid and session in headers and body, the one refusal for every refused
//! token, revocation in force at once (on every instance within a second), no per-address
//! rate limit.

use std::time::{Duration, Instant};

use liveuser::model::Sid;
use serde_json::{Value, json};

use crate::common::{Reply, TestApp, jwt_claims, on_postgres};

const CHECK: &str = "/liveuser/Auth/Check";

fn check(app: &TestApp, method: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let headers: Vec<(&str, String)> = token
        .map(|t| ("authorization", format!("Bearer {t}")))
        .into_iter()
        .collect();
    app.raw(method, CHECK, &headers, body)
}

#[test]
fn a_valid_token_is_answered_with_its_uid_session_and_expiry_whatever_the_method() {
    let app = TestApp::spawn();
    let login = app.login_ok("alice");
    let token = login.str("access_token");
    let uid = login.str("uid");
    let sid = jwt_claims(&token)["sid"].as_str().unwrap().to_string();
    let expiry = login.body["expiry"].as_u64().unwrap();

    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        // A body, of any type, is ignored.
        let r = check(&app, method, Some(&token), b"not json at all {");
        assert_eq!(r.status, 200, "{method}: {}", r.text);
        assert_eq!(r.headers.get("x-liveuser-uid"), Some(&uid), "{method}");
        assert_eq!(r.headers.get("x-liveuser-session"), Some(&sid), "{method}");
        assert_eq!(
            r.body,
            json!({"uid": uid, "sid": sid, "exp": expiry}),
            "{method}: exp is an integer, as Login's expiry"
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
    let head = check(&app, "HEAD", Some(&token), b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.headers.get("x-liveuser-uid"), Some(&uid));
    assert_eq!(head.headers.get("x-liveuser-session"), Some(&sid));
    assert!(head.text.is_empty(), "HEAD has no body: {:?}", head.text);

    // The check counts in the request metrics under a name of its own.
    let metrics = app.raw("GET", "/metrics", &[], b"").text;
    assert!(
        metrics.contains(r#"method="AuthCheck""#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_refused_token_is_401_with_the_message_of_every_refused_access_token() {
    let app = TestApp::spawn();
    let login = app.login_ok("bob");
    let token = login.str("access_token");
    let refusal = app.query("not-a-token", &[]);
    refusal.assert_error(401, "unauthenticated");
    let message = refusal.str("msg");

    let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let mut claims = jwt_claims(&token);
    claims["sub"] = json!("someone-else");
    let tampered = format!(
        "{h}.{}.{s}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims.to_string()
        )
    );
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no header", vec![]),
        ("empty bearer", vec![("authorization", "Bearer ".into())]),
        (
            "another scheme",
            vec![("authorization", format!("Basic {token}"))],
        ),
        (
            "lowercase scheme",
            vec![("authorization", format!("bearer {token}"))],
        ),
        ("garbage", vec![("authorization", "Bearer x.y.z".into())]),
        (
            "a refresh token",
            vec![(
                "authorization",
                format!("Bearer {}", login.str("refresh_token")),
            )],
        ),
        (
            "tampered claims",
            vec![("authorization", format!("Bearer {tampered}"))],
        ),
        (
            "no signature",
            vec![("authorization", format!("Bearer {h}.{p}."))],
        ),
    ];
    for method in ["GET", "POST"] {
        for (name, headers) in &cases {
            let r = app.raw(method, CHECK, headers, b"");
            r.assert_error(401, "unauthenticated");
            assert_eq!(r.str("msg"), message, "{method} {name}");
            assert!(!r.headers.contains_key("x-liveuser-uid"), "{name}");
        }
    }
    // Expired: one access-token lifetime later, without leeway.
    assert_eq!(check(&app, "GET", Some(&token), b"").status, 200);
    app.set_clock(login.body["expiry"].as_u64().unwrap());
    let r = check(&app, "GET", Some(&token), b"");
    r.assert_error(401, "unauthenticated");
    assert_eq!(r.str("msg"), message);
}

#[test]
fn a_revoked_session_is_refused_at_once_and_a_fresh_login_is_not() {
    let app = TestApp::spawn();
    let token = app.login_ok("carol").str("access_token");
    assert_eq!(check(&app, "GET", Some(&token), b"").status, 200);
    let sid = Sid::parse(jwt_claims(&token)["sid"].as_str().unwrap()).unwrap();
    let revoked = app
        .block_on(liveuser::store::Store::revoke_sessions(
            app.service().store().as_ref(),
            &[sid],
        ))
        .unwrap();
    assert_eq!(revoked, 1);
    // The token was verified (and its signature remembered) before: the session check
    // still runs on every call.
    check(&app, "GET", Some(&token), b"").assert_error(401, "unauthenticated");
    assert_eq!(check(&app, "HEAD", Some(&token), b"").status, 401);
    app.query(&token, &[]).assert_error(401, "unauthenticated");
    let fresh = app.login_ok("carol").str("access_token");
    assert_eq!(check(&app, "GET", Some(&fresh), b"").status, 200);
}

#[test]
fn the_check_is_not_rate_limited_per_address() {
    let app = TestApp::spawn_with(|c| {
        c.limits.login_per_min = 1;
        c.limits.renew_per_min = 1;
    });
    let token = app.login_ok("dave").str("access_token");
    for i in 0..300 {
        let r = check(&app, "GET", Some(&token), b"");
        assert_eq!(r.status, 200, "call {i}: {}", r.text);
    }
    // The limits are in force for what they limit.
    app.login("erin").assert_error(429, "resource_exhausted");
}

#[test]
fn the_documented_answers_of_every_method_are_the_real_ones() {
    let app = TestApp::spawn();
    let doc = app.raw("GET", "/liveuser/openapi.json", &[], b"").body;
    let item = doc["paths"][CHECK].as_object().unwrap();
    let mut methods: Vec<&str> = item.keys().map(String::as_str).collect();
    methods.sort_unstable();
    assert_eq!(
        methods,
        [
            "delete", "get", "head", "options", "patch", "post", "put", "trace"
        ],
        "any method a path item can name"
    );
    let token = app.login_ok("frank").str("access_token");
    for (method, op) in item {
        assert_eq!(op["security"], json!([{"bearer": []}]), "{method}");
        let upper = method.to_uppercase();
        let ok = check(&app, &upper, Some(&token), b"");
        assert_eq!(ok.status, 200, "{method}");
        let headers = &op["responses"]["200"]["headers"];
        for name in ["X-Liveuser-Uid", "X-Liveuser-Session"] {
            assert!(headers[name].is_object(), "{method}: {name}");
            assert!(
                ok.headers.contains_key(&name.to_lowercase()),
                "{method}: {name}"
            );
        }
        let refused = check(&app, &upper, None, b"");
        assert_eq!(refused.status, 401, "{method}");
        assert!(op["responses"]["401"].is_object(), "{method}");
        if method != "head" {
            let schema = &doc["components"]["schemas"]["AuthCheck"];
            let mut fields: Vec<&str> = ok
                .body
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut required: Vec<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            fields.sort_unstable();
            required.sort_unstable();
            assert_eq!(
                fields, required,
                "{method}: the body has the documented fields"
            );
        }
    }
}

/// Polls `base`'s Auth/Check with `token` until it is refused; how long that took.
fn until_refused(base: &str, token: &str, since: Instant) -> Duration {
    let agent = crate::common::agent();
    loop {
        let r = crate::common::send(
            &agent,
            "GET",
            &format!("{base}{CHECK}"),
            &[("authorization", format!("Bearer {token}"))],
            b"",
        );
        if r.status == 401 {
            return since.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(since.elapsed() < Duration::from_secs(5), "still accepted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn on_postgres_a_revocation_through_one_instance_is_refused_by_the_others_check_within_a_second() {
    on_postgres(|| {
        let a = TestApp::spawn();
        let url = a.config.storage.postgres_url.clone();
        let b = TestApp::spawn_with(|c| c.storage.postgres_url = url);
        let token = a.login_ok("gina").str("access_token");
        let sid = Sid::parse(jwt_claims(&token)["sid"].as_str().unwrap()).unwrap();
        // Both instances have checked (and cached) the token and its session.
        for app in [&a, &b] {
            assert_eq!(check(app, "GET", Some(&token), b"").status, 200);
        }
        let since = Instant::now();
        a.block_on(liveuser::store::Store::revoke_sessions(
            a.service().store().as_ref(),
            &[sid],
        ))
        .unwrap();
        let took = until_refused(&b.base, &token, since);
        assert!(took < Duration::from_secs(1), "took {took:?}");
        check(&a, "GET", Some(&token), b"").assert_error(401, "unauthenticated");
        let body: Value = check(&b, "GET", Some(&token), b"").body;
        assert_eq!(body["code"], "unauthenticated");
    });
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    a_valid_token_is_answered_with_its_uid_session_and_expiry_whatever_the_method,
    every_refused_token_is_401_with_the_message_of_every_refused_access_token,
    a_revoked_session_is_refused_at_once_and_a_fresh_login_is_not,
    the_check_is_not_rate_limited_per_address,
);
