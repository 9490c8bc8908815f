//! Wx.Login: users, idempotent codes, and the WeChat exchange.

use std::thread;

use crate::common::{TestApp, WX_SECRET, jwt_claims};

#[test]
fn login_creates_a_user_whose_uid_is_not_the_openid() {
    let app = TestApp::spawn_wechat(|_| {});
    let r = app.login_ok("ok-alice");
    let uid = r.str("uid");
    assert!(!uid.contains("openid"), "uid {uid} leaks the openid");
    assert!(!r.str("refresh_token").is_empty());

    let q = app.query(&r.str("access_token"), &[&uid]);
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["users"][0]["uid"], uid.as_str());
    assert!(
        !q.text.contains("openid-alice"),
        "QueryUser leaks the openid: {}",
        q.text
    );
}

#[test]
fn a_second_login_of_the_same_openid_gets_the_same_uid() {
    let app = TestApp::spawn_wechat(|_| {});
    let first = app.login_ok("ok-bob");
    // WeChat gives the same openid for a new code of the same user.
    let second = app.post(
        "/liveuser/Wx/Login",
        &serde_json::json!({"code": "ok-bob"}),
        None,
    );
    let third = app.login_ok("slow-ok-bob");
    assert_eq!(first.str("uid"), second.str("uid"));
    assert_eq!(first.str("uid"), third.str("uid"));
    assert_ne!(first.str("refresh_token"), third.str("refresh_token"));
    let other = app.login_ok("ok-carol");
    assert_ne!(first.str("uid"), other.str("uid"));
}

#[test]
fn expiry_equals_the_access_tokens_exp_and_claims_are_complete() {
    let app = TestApp::spawn();
    let r = app.login_ok("dave");
    let claims = jwt_claims(&r.str("access_token"));
    assert_eq!(r.body["expiry"].as_u64(), claims["exp"].as_u64());
    assert!(
        r.body["expiry"].is_i64() || r.body["expiry"].is_u64(),
        "expiry is an integer"
    );
    assert_eq!(claims["sub"], r.str("uid").as_str());
    assert_eq!(claims["iss"], "liveuser");
    assert_eq!(claims["aud"], "liveuser");
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, 7200);
    assert_eq!(claims["sid"].as_str().map(str::len), Some(32));
}

#[test]
fn mock_mode_maps_the_same_code_to_the_same_user() {
    let app = TestApp::spawn();
    let a = app.login_ok("alice");
    app.advance(400); // past the code's idempotency window: a fresh exchange
    let b = app.login_ok("alice");
    let c = app.login_ok("someone-else");
    assert_eq!(a.str("uid"), b.str("uid"));
    assert_ne!(a.str("uid"), c.str("uid"));
}

#[test]
fn each_wechat_answer_maps_to_its_code_and_status() {
    let app = TestApp::spawn_wechat(|_| {});
    let cases = [
        ("e40029", 401, "unauthenticated"),
        ("e40163", 401, "unauthenticated"),
        ("e45011", 429, "resource_exhausted"),
        ("e40226", 403, "permission_denied"),
        ("busy-always", 503, "unavailable"),
        ("http500", 503, "unavailable"),
        ("garbage", 503, "unavailable"),
        ("hang", 503, "unavailable"),
        ("e99999", 503, "unavailable"),
    ];
    for (code, status, error) in cases {
        let r = app.login(code);
        r.assert_error(status, error);
        assert!(
            !r.text.contains(WX_SECRET),
            "{code}: the answer holds the secret"
        );
    }
    let r = app.login("e99999");
    assert!(
        r.str("msg").contains("99999"),
        "WeChat's errcode is in the message: {}",
        r.text
    );
    // -1 is retried exactly once.
    assert_eq!(app.wx.as_ref().unwrap().calls("busy-always"), 2);
}

#[test]
fn a_busy_answer_once_is_retried_and_logs_in() {
    let app = TestApp::spawn_wechat(|_| {});
    let r = app.login_ok("busy-once-erin");
    assert!(!r.str("uid").is_empty());
    assert_eq!(app.wx.as_ref().unwrap().calls("busy-once-erin"), 2);
}

#[test]
fn a_wrong_app_secret_is_unavailable_and_not_echoed() {
    let app = TestApp::spawn_wechat(|c| {
        c.wx.secret = liveuser::secret::Secret::new("wrong-secret-value".into());
    });
    let r = app.login("ok-frank");
    r.assert_error(503, "unavailable");
    assert!(!r.text.contains("wrong-secret-value"));
}

#[test]
fn wechat_mode_without_credentials_is_unavailable() {
    let app = TestApp::spawn_wechat(|c| c.wx.appid = String::new());
    app.login("ok-gina").assert_error(503, "unavailable");
}

#[test]
fn the_same_code_twice_makes_one_wechat_call_and_two_sessions_of_one_user() {
    let app = TestApp::spawn_wechat(|_| {});
    let a = app.login_ok("ok-henry");
    let b = app.login_ok("ok-henry");
    assert_eq!(a.str("uid"), b.str("uid"));
    assert_ne!(a.str("refresh_token"), b.str("refresh_token"));
    assert_ne!(
        jwt_claims(&a.str("access_token"))["sid"],
        jwt_claims(&b.str("access_token"))["sid"]
    );
    assert_eq!(app.wx.as_ref().unwrap().calls("ok-henry"), 1);
}

#[test]
fn a_code_is_forgotten_after_five_minutes() {
    let app = TestApp::spawn_wechat(|_| {});
    app.login_ok("ok-ivy");
    app.advance(301);
    app.login_ok("ok-ivy");
    assert_eq!(app.wx.as_ref().unwrap().calls("ok-ivy"), 2);
}

#[test]
fn a_failed_exchange_is_not_remembered() {
    let app = TestApp::spawn_wechat(|_| {});
    app.login("e45011").assert_error(429, "resource_exhausted");
    app.login("e45011").assert_error(429, "resource_exhausted");
    assert_eq!(app.wx.as_ref().unwrap().calls("e45011"), 2);
}

#[test]
fn eight_concurrent_logins_with_one_code_make_one_call_and_one_user() {
    let app = TestApp::spawn_wechat(|_| {});
    let replies: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| app.login("slow-ok-jack")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let uid = replies[0].str("uid");
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.str("uid"), uid);
    }
    assert_eq!(app.wx.as_ref().unwrap().calls("slow-ok-jack"), 1);
    let stored = app.block_on(liveuser::store::Store::list_users(
        app.service().store().as_ref(),
        None,
        100,
    ));
    assert_eq!(stored.unwrap().len(), 1, "exactly one user was created");
}

#[test]
fn the_per_user_session_cap_evicts_the_oldest_session() {
    let app = TestApp::spawn_with(|c| c.token.max_sessions_per_user = 3);
    let first = app.login_ok("kim");
    let newer: Vec<_> = (0..3)
        .map(|_| {
            app.advance(400); // a new code each time in real life; here: past idempotency
            app.login_ok("kim")
        })
        .collect();
    let token = first.str("access_token");
    // The first session was evicted: its access and refresh tokens are dead.
    app.query(&token, &[]).assert_error(401, "unauthenticated");
    app.renew(&first.str("refresh_token"))
        .assert_error(401, "unauthenticated");
    // Only the oldest: the three newer sessions all still work.
    for r in &newer {
        let q = app.query(&r.str("access_token"), &[]);
        assert_eq!(q.status, 200, "{}", q.text);
        let renewed = app.renew(&r.str("refresh_token"));
        assert_eq!(renewed.status, 200, "{}", renewed.text);
    }
}

#[test]
fn logins_within_one_second_are_evicted_in_the_order_they_came() {
    // Session times are whole seconds; the cap must still know which of several logins
    // in one second came first. Eight users, three quick logins each, a cap of two: the
    // first login of each is the one evicted.
    let app = TestApp::spawn_with(|c| c.token.max_sessions_per_user = 2);
    for n in 0..8 {
        let code = format!("quick-{n}");
        let logins: Vec<_> = (0..3).map(|_| app.login_ok(&code)).collect();
        let live: Vec<u16> = logins
            .iter()
            .map(|l| app.query(&l.str("access_token"), &[]).status)
            .collect();
        assert_eq!(
            live,
            [401, 200, 200],
            "user {n}: the first login is evicted"
        );
    }
}

#[test]
fn the_unionid_and_session_key_are_stored_and_the_session_key_is_never_answered() {
    use liveuser::store::Store;
    let app = TestApp::spawn_wechat(|_| {});
    let config = crate::common::write_config(app.dir.path());
    let r = app.login_ok("ok-uma");
    let uid = r.str("uid");
    let store = app.service().store();
    let identities = app.block_on(store.list_identities(None, 100)).unwrap();
    let (openid, identity) = identities
        .iter()
        .find(|(_, i)| i.uid.to_string() == uid)
        .expect("an identity for the new user");
    assert_eq!(openid, "openid-uma");
    assert_eq!(identity.unionid.as_deref(), Some("union-uma"));
    // The fake WeChat's session_key.
    let session_key = "c2Vzc2lvbi1rZXk=";
    assert_eq!(identity.session_key.expose(), session_key);

    // No answer, to the user or to an operator, carries it (nor its decoded bytes).
    let token = r.str("access_token");
    let renewed = app.renew(&r.str("refresh_token"));
    let mut answers = vec![
        r.text.clone(),
        renewed.text.clone(),
        app.add_user(&token, serde_json::json!({"name": "Uma"}))
            .text,
        app.query(&token, &[&uid]).text,
        app.login_ok("ok-uma").text,
    ];
    for args in [
        vec!["user", "get", uid.as_str()],
        vec!["--json", "user", "get", uid.as_str()],
        vec!["--json", "session", "list", "--uid", uid.as_str()],
        vec!["export", "--sessions"],
    ] {
        answers.push(crate::common::cli(&config, &args).ok().to_string());
    }
    for answer in &answers {
        assert!(!answer.is_empty());
        assert!(!answer.contains(session_key), "{answer}");
        assert!(!answer.contains("session-key"), "{answer}");
    }
}

#[test]
fn login_validates_the_code() {
    let app = TestApp::spawn();
    app.login("").assert_error(400, "invalid_argument");
    let r = app.login(&"x".repeat(300));
    r.assert_error(400, "invalid_argument");
    assert!(r.str("msg").contains("code"));
    app.login("a\u{0}b").assert_error(400, "invalid_argument");
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    login_creates_a_user_whose_uid_is_not_the_openid,
    a_second_login_of_the_same_openid_gets_the_same_uid,
    expiry_equals_the_access_tokens_exp_and_claims_are_complete,
    mock_mode_maps_the_same_code_to_the_same_user,
    each_wechat_answer_maps_to_its_code_and_status,
    a_busy_answer_once_is_retried_and_logs_in,
    a_wrong_app_secret_is_unavailable_and_not_echoed,
    wechat_mode_without_credentials_is_unavailable,
    the_same_code_twice_makes_one_wechat_call_and_two_sessions_of_one_user,
    a_code_is_forgotten_after_five_minutes,
    a_failed_exchange_is_not_remembered,
    eight_concurrent_logins_with_one_code_make_one_call_and_one_user,
    the_per_user_session_cap_evicts_the_oldest_session,
    logins_within_one_second_are_evicted_in_the_order_they_came,
    the_unionid_and_session_key_are_stored_and_the_session_key_is_never_answered,
    login_validates_the_code,
);
