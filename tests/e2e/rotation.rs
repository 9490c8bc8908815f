//! Wx.RenewToken: rotation, grace retries, reuse detection, expiry.

use std::collections::HashSet;
use std::thread;

use serde_json::json;

use crate::common::{
    Binary, TestApp, agent, binary_config, cli, jwt_claims, login, past_the_grace, post, send,
};

#[test]
fn each_renewal_returns_a_new_refresh_token_and_a_fresh_access_token() {
    let app = TestApp::spawn();
    let login = app.login_ok("alice");
    let mut token = login.str("refresh_token");
    let mut seen = HashSet::from([token.clone()]);
    for _ in 0..5 {
        app.advance(60);
        let r = app.renew(&token);
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.str("uid"), login.str("uid"));
        let claims = jwt_claims(&r.str("access_token"));
        assert_eq!(r.body["expiry"].as_u64(), claims["exp"].as_u64());
        assert_eq!(claims["sid"], jwt_claims(&login.str("access_token"))["sid"]);
        token = r.str("refresh_token");
        assert!(token.starts_with("lvrt_"));
        assert!(
            seen.insert(token.clone()),
            "a refresh token came back twice"
        );
        assert_eq!(app.query(&r.str("access_token"), &[]).status, 200);
    }
}

#[test]
fn a_retry_within_the_grace_period_returns_the_same_successor() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("bob").str("refresh_token");
    let first = app.renew(&t0);
    app.advance(5);
    let retry = app.renew(&t0);
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(first.str("refresh_token"), retry.str("refresh_token"));
    // The successor still works afterwards: the retry revoked nothing.
    let next = app.renew(&first.str("refresh_token"));
    assert_eq!(next.status, 200, "{}", next.text);
}

/// The grace is measured in milliseconds from the rotation: with a 2 s grace, 1.5 s
/// later is a retry and 2.3 s later is reuse, wherever in its second the rotation fell.
/// (Measured in whole seconds, a rotation 50 ms into a second gave a retry 2.3 s later
/// the successor instead of revoking the family.)
#[test]
fn the_grace_period_runs_to_the_millisecond_wherever_in_a_second_the_rotation_falls() {
    for into_second in [50, 500, 950] {
        let app = TestApp::spawn_with(|c| c.token.reuse_grace_secs = 2);
        let t0 = app.login_ok("mia").str("refresh_token");
        app.clock.align(into_second);
        let first = app.renew(&t0);
        assert_eq!(first.status, 200, "{}", first.text);
        let t1 = first.str("refresh_token");

        app.clock.advance_ms(1_500);
        let retry = app.renew(&t0);
        assert_eq!(
            retry.status, 200,
            "1.5 s after a rotation at +{into_second} ms: {}",
            retry.text
        );
        assert_eq!(
            retry.str("refresh_token"),
            t1,
            "a retry gets the same successor"
        );

        app.clock.advance_ms(800);
        app.renew(&t0).assert_error(401, "unauthenticated");
        // That was reuse, not a late retry: the whole family is revoked.
        app.renew(&t1).assert_error(401, "unauthenticated");
        app.query(&first.str("access_token"), &[])
            .assert_error(401, "unauthenticated");
    }
}

/// A clock stepped back after a rotation does not stretch the grace: the rotation then
/// lies in the future, and a token retired "in the future" is reuse, not a retry. (It
/// counted as no time passed, so a clock stepped back by a minute made the grace a minute
/// longer.) Only on sled: on PostgreSQL the database's clock times the grace, which this
/// test cannot move.
#[test]
fn a_retired_token_presented_after_the_clock_was_stepped_back_is_reuse() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("pia").str("refresh_token");
    let first = app.renew(&t0);
    assert_eq!(first.status, 200, "{}", first.text);
    app.advance(-5);
    app.renew(&t0).assert_error(401, "unauthenticated");
    app.renew(&first.str("refresh_token"))
        .assert_error(401, "unauthenticated");
}

/// With no grace at all, even an immediate second presentation of a rotated token is
/// reuse.
#[test]
fn with_a_grace_of_zero_a_retried_token_is_reuse_at_once() {
    let app = TestApp::spawn_with(|c| c.token.reuse_grace_secs = 0);
    let t0 = app.login_ok("noa").str("refresh_token");
    let t1 = app.renew(&t0).str("refresh_token");
    app.renew(&t0).assert_error(401, "unauthenticated");
    app.renew(&t1).assert_error(401, "unauthenticated");
}

#[test]
fn twenty_concurrent_renewals_of_one_token_yield_one_successor() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("carol").str("refresh_token");
    let replies: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = (0..20).map(|_| s.spawn(|| app.renew(&t0))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let successors: HashSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text);
            r.str("refresh_token")
        })
        .collect();
    assert_eq!(successors.len(), 1, "{successors:?}");
    let successor = successors.into_iter().next().unwrap();
    assert_eq!(app.renew(&successor).status, 200);
}

#[test]
fn reuse_after_the_grace_period_revokes_the_whole_family() {
    let app = TestApp::spawn_with(|c| c.token.reuse_grace_secs = 1);
    let login = app.login_ok("dan");
    let t0 = login.str("refresh_token");
    let r1 = app.renew(&t0);
    let t1 = r1.str("refresh_token");
    let access1 = r1.str("access_token");
    past_the_grace(&app, 2);
    app.renew(&t0).assert_error(401, "unauthenticated");
    // Everything of that family is now dead, including access tokens already issued.
    app.renew(&t1).assert_error(401, "unauthenticated");
    app.query(&access1, &[])
        .assert_error(401, "unauthenticated");
    app.query(&login.str("access_token"), &[])
        .assert_error(401, "unauthenticated");
    // Another session of the same user is untouched.
    app.advance(400);
    let other = app.login_ok("dan");
    assert_eq!(app.query(&other.str("access_token"), &[]).status, 200);
}

#[test]
fn reusing_an_older_token_revokes_the_family_even_within_the_grace_period() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("erin").str("refresh_token");
    let t1 = app.renew(&t0).str("refresh_token");
    let t2 = app.renew(&t1).str("refresh_token");
    // t0's successor (t1) has been used, so a t0 retry is no longer a retry.
    app.renew(&t0).assert_error(401, "unauthenticated");
    app.renew(&t2).assert_error(401, "unauthenticated");
}

#[test]
fn unknown_and_malformed_refresh_tokens_get_the_same_answer() {
    let app = TestApp::spawn();
    let real = app.login_ok("fay").str("refresh_token");
    let forged = format!("lvrt_{}", "A".repeat(43));
    let mut messages = HashSet::new();
    for bad in [
        "",
        "garbage",
        &forged,
        &real[..real.len() - 1],
        &format!("{real}x"),
    ] {
        let r = app.renew(bad);
        r.assert_error(401, "unauthenticated");
        messages.insert(r.str("msg"));
    }
    assert_eq!(messages.len(), 1);
    let r = app.post(
        "/liveuser/Wx/RenewToken",
        &json!({"refresh_token": 5}),
        None,
    );
    r.assert_error(400, "invalid_argument");
    assert!(r.str("msg").contains("refresh_token"));
}

#[test]
fn absolute_expiry_is_never_extended_by_rotation() {
    let app = TestApp::spawn_with(|c| {
        c.token.refresh_ttl_secs = 1000;
        c.token.refresh_idle_secs = 400;
        c.token.access_ttl_secs = 600;
    });
    let login = app.login_ok("gus");
    let mut token = login.str("refresh_token");
    let start = jwt_claims(&login.str("access_token"))["iat"]
        .as_u64()
        .unwrap();
    for _ in 0..3 {
        app.advance(300);
        let r = app.renew(&token);
        assert_eq!(r.status, 200, "{}", r.text);
        // The access token never outlives the session.
        assert!(r.body["expiry"].as_u64().unwrap() <= start + 1000);
        token = r.str("refresh_token");
    }
    // 1000 s after login: the expiry second itself is past the session's life.
    app.advance(100);
    app.renew(&token).assert_error(401, "unauthenticated");
}

#[test]
fn an_idle_session_expires_and_use_keeps_it_alive() {
    let app = TestApp::spawn_with(|c| c.token.refresh_idle_secs = 100);
    let t0 = app.login_ok("hal").str("refresh_token");
    app.advance(90);
    let t1 = app.renew(&t0).str("refresh_token");
    app.advance(90);
    let t2 = app.renew(&t1).str("refresh_token");
    // 100 s after the last use: the idle expiry second itself is too late.
    app.advance(100);
    app.renew(&t2).assert_error(401, "unauthenticated");
}

#[test]
fn with_rotation_off_renewal_returns_the_same_token_and_refreshes_idle_expiry() {
    let app = TestApp::spawn_with(|c| {
        c.token.rotation = false;
        c.token.refresh_idle_secs = 100;
    });
    let t0 = app.login_ok("ivy").str("refresh_token");
    for _ in 0..3 {
        app.advance(90);
        let r = app.renew(&t0);
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.str("refresh_token"), t0);
    }
    app.advance(101);
    app.renew(&t0).assert_error(401, "unauthenticated");
}

#[test]
fn swept_sessions_are_gone_from_storage() {
    let app = TestApp::spawn_with(|c| c.token.refresh_idle_secs = 100);
    let login = app.login_ok("jon");
    let live = app.login_ok("kay");
    app.advance(101);
    let t = app.renew(&live.str("refresh_token"));
    assert_eq!(t.status, 401, "both idle now");
    let fresh = app.login_ok("liz");
    let removed = app.block_on(app.service().sweep()).unwrap();
    assert_eq!(removed, 2);
    app.renew(&login.str("refresh_token"))
        .assert_error(401, "unauthenticated");
    assert_eq!(app.renew(&fresh.str("refresh_token")).status, 200);
}

#[test]
fn reuse_is_logged_as_a_warning_with_uid_family_and_client_but_not_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[token]\nreuse_grace_secs = 1\n",
        binary_config(dir.path())
    );
    let server = Binary::serve(dir.path(), &config, &[]);
    let r = login(&server.base, "ivy");
    let (uid, old) = (r.str("uid"), r.str("refresh_token"));
    let sid = jwt_claims(&r.str("access_token"))["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let renew = |token: &str| {
        post(
            &server.base,
            "/liveuser/Wx/RenewToken",
            json!({ "refresh_token": token }),
            None,
        )
    };
    let new = renew(&old);
    assert_eq!(new.status, 200, "{}", new.text);
    // Past the one-second grace period the retired token is reuse, not a retry.
    thread::sleep(std::time::Duration::from_secs(2));
    renew(&old).assert_error(401, "unauthenticated");
    renew(&new.str("refresh_token")).assert_error(401, "unauthenticated");

    let mut warning = None;
    for _ in 0..100 {
        let log = server.log();
        warning = log
            .lines()
            .find(|l| l.contains("WARN") && l.to_lowercase().contains("reuse"))
            .map(str::to_string);
        if warning.is_some() {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    let warning = warning.unwrap_or_else(|| panic!("no reuse warning:\n{}", server.log()));
    assert!(warning.contains(&uid), "names the uid: {warning}");
    assert!(
        warning.contains(&sid),
        "names the session family: {warning}"
    );
    assert!(warning.contains("127.0.0.1"), "names the client: {warning}");
    let log = server.log();
    for token in [&old, &new.str("refresh_token")] {
        assert!(
            !log.contains(&token[5..]),
            "a refresh token is in the log:\n{log}"
        );
    }
}

#[test]
fn the_background_sweep_removes_dead_sessions() {
    use liveuser::store::Store;
    let app = TestApp::spawn_with(|c| {
        c.storage.sweep_interval_secs = 1;
        c.token.refresh_idle_secs = 60;
    });
    let sid_of = |r: &crate::common::Reply| {
        let sid = jwt_claims(&r.str("access_token"))["sid"]
            .as_str()
            .unwrap()
            .to_string();
        liveuser::model::Sid::parse(&sid).unwrap()
    };
    let idle = sid_of(&app.login_ok("otto"));
    app.advance(61);
    let live = sid_of(&app.login_ok("pia"));
    let store = app.service().store();
    assert!(app.block_on(store.session(idle)).unwrap().is_some());
    // No one calls sweep: the server's own background task must remove it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.block_on(store.session(idle)).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session was not swept"
        );
        thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        app.block_on(store.session(live)).unwrap().is_some(),
        "a live session is kept"
    );
}

/// Flips one bit of the byte at `at` of a refresh token's 52 bytes.
fn corrupt(token: &str, at: usize) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = b64.decode(token.trim_start_matches("lvrt_")).unwrap();
    bytes[at] ^= 0x01;
    format!("lvrt_{}", b64.encode(bytes))
}

#[test]
fn a_corrupted_or_invented_token_that_resembles_a_live_one_revokes_nothing() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("olga").str("refresh_token");
    let t1 = app.renew(&t0).str("refresh_token");
    let t2 = app.renew(&t1).str("refresh_token");
    // The seed (another session), the generation (an older or a newer one) or the tag
    // changed: none is authentic, so none is taken for reuse of the session.
    for at in [0, 31, 32, 35, 36, 51] {
        for token in [&t0, &t1, &t2] {
            app.renew(&corrupt(token, at))
                .assert_error(401, "unauthenticated");
        }
    }
    let r = app.renew(&t2);
    assert_eq!(r.status, 200, "the session survived: {}", r.text);
}

/// With the refresh key (from an export with sessions, or a copy of the database) and one
/// old token of a session, a token of any generation can be made. One ahead of the
/// session was refused and revoked nothing, so whoever had the key could try generations
/// until one was current, unseen. A token that no rotation issued now revokes its family
/// and is counted and logged, so a wrong guess costs the session and shows.
#[test]
fn a_token_made_with_the_refresh_key_ahead_of_its_session_revokes_the_family() {
    use liveuser::token::{RefreshKey, RefreshToken, refresh_key_id};
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let first = login(&server.base, "mia");
    let (uid, t0) = (first.str("uid"), first.str("refresh_token"));
    let sid = jwt_claims(&first.str("access_token"))["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let t1 = crate::common::renew(&server.base, &t0).str("refresh_token");
    let r2 = crate::common::renew(&server.base, &t1);
    assert_eq!(r2.status, 200, "{}", r2.text);
    let other = login(&server.base, "ned").str("refresh_token");

    let file = dir.path().join("leaked.jsonl");
    cli(
        &dir.path().join("liveuser.toml"),
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();
    let text = std::fs::read_to_string(&file).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let hex = header["refresh_key"].as_str().unwrap().to_string();
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let key = RefreshKey::new(bytes.clone());
    // The session is at generation 2; the guess is generation 3.
    let mut ahead = RefreshToken::parse(&t0).unwrap();
    for _ in 0..3 {
        ahead = ahead.successor(&key).unwrap();
    }
    let forged = crate::common::renew(&server.base, &ahead.encode());
    forged.assert_error(401, "unauthenticated");
    let refused = crate::common::renew(&server.base, "lvrt_unknown");
    assert_eq!(forged.body["msg"], refused.body["msg"], "the one refusal");

    crate::common::renew(&server.base, &r2.str("refresh_token"))
        .assert_error(401, "unauthenticated");
    post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": []}),
        Some(&r2.str("access_token")),
    )
    .assert_error(401, "unauthenticated");
    let r = crate::common::renew(&server.base, &other);
    assert_eq!(r.status, 200, "another session is left alone: {}", r.text);

    let metrics = send(
        &agent(),
        "GET",
        &format!("{}/metrics", server.base),
        &[],
        b"",
    );
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == "liveuser_refresh_key_leak_detected_total 1"),
        "{}",
        metrics.text
    );
    let mut warning = None;
    for _ in 0..100 {
        warning = server
            .log()
            .lines()
            .find(|l| l.contains("WARN") && l.contains("refresh key is known"))
            .map(str::to_string);
        if warning.is_some() {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    let warning = warning.unwrap_or_else(|| panic!("no warning:\n{}", server.log()));
    for needle in [&uid, &sid, "127.0.0.1", &refresh_key_id(&bytes)] {
        assert!(warning.contains(needle), "names {needle}: {warning}");
    }
    let log = server.log();
    for secret in [&ahead.encode()[5..], &t0[5..], &hex] {
        assert!(
            !log.contains(secret),
            "a token or the key is in the log:\n{log}"
        );
    }
}

/// The same 52 bytes with the spare low bits of the last base64 character set: another
/// spelling of `token`.
fn respelled(token: &str) -> String {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = token.chars().last().unwrap();
    let at = ALPHABET.find(last).unwrap();
    assert_eq!(
        at & 0x0f,
        0,
        "a canonical token leaves the spare bits clear"
    );
    let other = ALPHABET.as_bytes()[at | 0x05] as char;
    format!("{}{other}", &token[..token.len() - 1])
}

/// A token is its one canonical spelling. Another spelling of the same bytes, if it were
/// read as the token, would renew as the current one, retry as the just-retired one, or
/// revoke the family as an older one: it is refused, and changes nothing.
#[test]
fn another_base64_spelling_of_a_token_is_refused_and_revokes_nothing() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("rae").str("refresh_token");
    let t1 = app.renew(&t0).str("refresh_token");
    let t2 = app.renew(&t1).str("refresh_token");
    // A decoder that ignores the spare bits, as many do, reads both spellings alike.
    use base64::Engine;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    );
    for token in [&t0, &t1, &t2] {
        let other = respelled(token);
        assert_ne!(&other, token);
        assert_eq!(
            lenient.decode(&other[5..]).unwrap(),
            lenient.decode(&token[5..]).unwrap()
        );
        app.renew(&other).assert_error(401, "unauthenticated");
    }
    let r = app.renew(&t2);
    assert_eq!(r.status, 200, "the session is as it was: {}", r.text);
    assert_eq!(app.renew(&r.str("refresh_token")).status, 200);
}

#[test]
fn a_token_two_or_more_rotations_old_revokes_its_family_even_within_the_grace() {
    let app = TestApp::spawn();
    let t0 = app.login_ok("pia").str("refresh_token");
    let t1 = app.renew(&t0).str("refresh_token");
    let t2 = app.renew(&t1).str("refresh_token");
    let r3 = app.renew(&t2);
    let t3 = r3.str("refresh_token");
    app.renew(&t0).assert_error(401, "unauthenticated");
    app.renew(&t3).assert_error(401, "unauthenticated");
    app.query(&r3.str("access_token"), &[])
        .assert_error(401, "unauthenticated");
}

#[test]
fn rotation_switched_off_refuses_tokens_rotated_before_without_revoking() {
    let mut app = TestApp::spawn();
    let t0 = app.login_ok("quin").str("refresh_token");
    let t1 = app.renew(&t0).str("refresh_token");
    app.config.token.rotation = false;
    app.restart();
    // The retired token is refused, within the grace or not, and judged no further.
    app.renew(&t0).assert_error(401, "unauthenticated");
    app.advance(60);
    app.renew(&t0).assert_error(401, "unauthenticated");
    for _ in 0..2 {
        let r = app.renew(&t1);
        assert_eq!(r.status, 200, "the current token still renews: {}", r.text);
        assert_eq!(
            r.str("refresh_token"),
            t1,
            "without rotation, the same token"
        );
    }
    // Rotation back on: the token rotates from where it stands.
    app.config.token.rotation = true;
    app.restart();
    let t2 = app.renew(&t1).str("refresh_token");
    assert_ne!(t2, t1);
    assert_eq!(app.renew(&t2).status, 200);
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    each_renewal_returns_a_new_refresh_token_and_a_fresh_access_token,
    a_retry_within_the_grace_period_returns_the_same_successor,
    // Not the_grace_period_runs_to_the_millisecond_…: it places rotations by the
    // service's clock, and on PostgreSQL the database's clock times the grace
    // (shared_database.rs measures it there).
    with_a_grace_of_zero_a_retried_token_is_reuse_at_once,
    twenty_concurrent_renewals_of_one_token_yield_one_successor,
    reuse_after_the_grace_period_revokes_the_whole_family,
    reusing_an_older_token_revokes_the_family_even_within_the_grace_period,
    unknown_and_malformed_refresh_tokens_get_the_same_answer,
    absolute_expiry_is_never_extended_by_rotation,
    an_idle_session_expires_and_use_keeps_it_alive,
    with_rotation_off_renewal_returns_the_same_token_and_refreshes_idle_expiry,
    swept_sessions_are_gone_from_storage,
    reuse_is_logged_as_a_warning_with_uid_family_and_client_but_not_the_token,
    the_background_sweep_removes_dead_sessions,
    a_corrupted_or_invented_token_that_resembles_a_live_one_revokes_nothing,
    a_token_two_or_more_rotations_old_revokes_its_family_even_within_the_grace,
    a_token_made_with_the_refresh_key_ahead_of_its_session_revokes_the_family,
    another_base64_spelling_of_a_token_is_refused_and_revokes_nothing,
    rotation_switched_off_refuses_tokens_rotated_before_without_revoking,
);
