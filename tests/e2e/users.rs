//! User.AddUser and User.QueryUser.

use serde_json::json;

use crate::common::TestApp;

#[test]
fn add_user_with_an_empty_uid_writes_the_callers_own_record() {
    let app = TestApp::spawn();
    let me = app.login_ok("alice");
    let token = me.str("access_token");
    let r = app.add_user(&token, json!({"uid": "", "name": "Alice", "agent": "iPhone 15", "avatar": "https://cdn.example.com/a.png"}));
    assert_eq!((r.status, r.body.clone()), (200, json!({})), "{}", r.text);
    let r = app.add_user(&token, json!({"name": "Alice 2"}));
    assert_eq!(r.status, 200, "{}", r.text);

    let q = app.query(&token, &[&me.str("uid")]);
    let user = &q.body["users"][0];
    assert_eq!(user["uid"], me.str("uid").as_str());
    assert_eq!(user["name"], "Alice 2");
    assert_eq!(
        user["agent"], "iPhone 15",
        "an unsent field keeps its value"
    );
    assert_eq!(user["avatar"], "https://cdn.example.com/a.png");
    assert!(user["update_at"].is_string());
}

#[test]
fn add_user_with_the_callers_own_uid_works() {
    let app = TestApp::spawn();
    let me = app.login_ok("bob");
    let r = app.add_user(
        &me.str("access_token"),
        json!({"uid": me.str("uid"), "name": "Bob"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn a_present_empty_field_clears_it() {
    let app = TestApp::spawn();
    let me = app.login_ok("carol");
    let token = me.str("access_token");
    app.add_user(&token, json!({"name": "Carol", "agent": "x"}));
    app.add_user(&token, json!({"agent": ""}));
    let q = app.query(&token, &[&me.str("uid")]);
    assert_eq!(q.body["users"][0]["name"], "Carol");
    assert_eq!(q.body["users"][0]["agent"], "");
}

#[test]
fn update_at_is_set_by_the_server_and_a_client_value_is_ignored() {
    let app = TestApp::spawn();
    let me = app.login_ok("dan");
    let token = me.str("access_token");
    let now = app.block_on(async { app.service().now() });
    let r = app.add_user(&token, json!({"name": "Dan", "update_at": "12345"}));
    assert_eq!(r.status, 200, "{}", r.text);
    let q = app.query(&token, &[&me.str("uid")]);
    let update_at: u64 = q.body["users"][0]["update_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        update_at >= now && update_at <= now + 5,
        "update_at {update_at} vs now {now}"
    );

    app.advance(100);
    app.add_user(&token, json!({"agent": "later"}));
    let q = app.query(&token, &[&me.str("uid")]);
    let later: u64 = q.body["users"][0]["update_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(later >= update_at + 100);
}

#[test]
fn writing_another_users_record_is_permission_denied() {
    let app = TestApp::spawn();
    let me = app.login_ok("eve");
    let other = app.login_ok("frank");
    let r = app.add_user(
        &me.str("access_token"),
        json!({"uid": other.str("uid"), "name": "pwned"}),
    );
    r.assert_error(403, "permission_denied");
    let q = app.query(&me.str("access_token"), &[&other.str("uid")]);
    assert_eq!(
        q.body["users"][0]["name"], "",
        "the other record is untouched"
    );
    // A uid that does not exist is just as forbidden, and is not created.
    app.add_user(
        &me.str("access_token"),
        json!({"uid": "nobody", "name": "x"}),
    )
    .assert_error(403, "permission_denied");
    let q = app.query(&me.str("access_token"), &["nobody"]);
    assert_eq!(q.body["users"], json!([]));
}

#[test]
fn each_field_limit_is_invalid_argument_naming_the_field() {
    let app = TestApp::spawn();
    let me = app.login_ok("gina");
    let token = me.str("access_token");
    let cases = [
        (json!({"name": "n".repeat(65)}), "name"),
        (json!({"agent": "a".repeat(65)}), "agent"),
        (
            json!({"avatar": format!("https://{}", "a".repeat(1020))}),
            "avatar",
        ),
        (json!({"avatar": "ftp://example.com/a.png"}), "avatar"),
        (json!({"name": "line\nbreak"}), "name"),
        (json!({"agent": "tab\there"}), "agent"),
        (json!({"uid": "bad uid!"}), "uid"),
        (json!({"uid": "u".repeat(65)}), "uid"),
        (json!({"name": 5}), "name"),
        (json!({"agent": ["x"]}), "agent"),
    ];
    for (user, field) in cases {
        let r = app.add_user(&token, user.clone());
        r.assert_error(400, "invalid_argument");
        assert!(r.str("msg").contains(field), "{user}: {}", r.text);
    }
    // Limits count characters: 64 CJK characters are fine.
    let r = app.add_user(&token, json!({"name": "名".repeat(64)}));
    assert_eq!(r.status, 200, "{}", r.text);
    // Nothing invalid was stored.
    let q = app.query(&token, &[&me.str("uid")]);
    assert_eq!(q.body["users"][0]["avatar"], "");
}

#[test]
fn add_user_requires_the_user_object() {
    let app = TestApp::spawn();
    let token = app.login_ok("hal").str("access_token");
    let r = app.post("/liveuser/User/AddUser", &json!({}), Some(&token));
    r.assert_error(400, "invalid_argument");
    assert!(r.str("msg").contains("user"));
    app.post(
        "/liveuser/User/AddUser",
        &json!({"user": "me"}),
        Some(&token),
    )
    .assert_error(400, "invalid_argument");
}

#[test]
fn query_user_keeps_order_drops_unknown_and_deduplicates() {
    let app = TestApp::spawn();
    let a = app.login_ok("ann");
    let b = app.login_ok("ben");
    let c = app.login_ok("cat");
    let (ua, ub, uc) = (a.str("uid"), b.str("uid"), c.str("uid"));
    let q = app.query(&a.str("access_token"), &[&uc, "ghost", &ua, &uc, &ub, &ua]);
    assert_eq!(q.status, 200, "{}", q.text);
    let got: Vec<&str> = q.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["uid"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![uc.as_str(), ua.as_str(), ub.as_str()]);
    let q = app.query(&a.str("access_token"), &[]);
    assert_eq!(q.body, json!({"users": []}));
}

#[test]
fn query_user_over_the_limit_is_rejected() {
    let app = TestApp::spawn_with(|c| c.server.max_query_uids = 5);
    let token = app.login_ok("dora").str("access_token");
    let five: Vec<String> = (0..5).map(|i| format!("u{i}")).collect();
    let six: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let refs = |v: &Vec<String>| v.iter().map(String::as_str).collect::<Vec<_>>().join(",");
    assert_eq!(
        app.query(&token, &refs(&five).split(',').collect::<Vec<_>>())
            .status,
        200
    );
    let r = app.query(&token, &refs(&six).split(',').collect::<Vec<_>>());
    r.assert_error(400, "invalid_argument");
    assert!(r.str("msg").contains("uids"));
}

#[test]
fn query_user_validates_each_uid() {
    let app = TestApp::spawn();
    let token = app.login_ok("eli").str("access_token");
    let r = app.post(
        "/liveuser/User/QueryUser",
        &json!({"uids": ["ok", 7]}),
        Some(&token),
    );
    r.assert_error(400, "invalid_argument");
    assert!(r.str("msg").contains("uids[1]"), "{}", r.text);
    let r = app.post(
        "/liveuser/User/QueryUser",
        &json!({"uids": "ok"}),
        Some(&token),
    );
    r.assert_error(400, "invalid_argument");
    let r = app.post("/liveuser/User/QueryUser", &json!({}), Some(&token));
    r.assert_error(400, "invalid_argument");
    let r = app.post(
        "/liveuser/User/QueryUser",
        &json!({"uids": ["a b"]}),
        Some(&token),
    );
    r.assert_error(400, "invalid_argument");
}

#[test]
fn profile_writes_survive_a_restart() {
    let mut app = TestApp::spawn();
    let me = app.login_ok("fay");
    app.add_user(&me.str("access_token"), json!({"name": "Fay"}));
    app.restart();
    // The signing key was generated and stored: the old access token still works.
    let q = app.query(&me.str("access_token"), &[&me.str("uid")]);
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["users"][0]["name"], "Fay");
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    add_user_with_an_empty_uid_writes_the_callers_own_record,
    add_user_with_the_callers_own_uid_works,
    a_present_empty_field_clears_it,
    update_at_is_set_by_the_server_and_a_client_value_is_ignored,
    writing_another_users_record_is_permission_denied,
    each_field_limit_is_invalid_argument_naming_the_field,
    add_user_requires_the_user_object,
    query_user_keeps_order_drops_unknown_and_deduplicates,
    query_user_over_the_limit_is_rejected,
    query_user_validates_each_uid,
    profile_writes_survive_a_restart,
);
