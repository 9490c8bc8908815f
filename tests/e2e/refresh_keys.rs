//! The key that tags refresh tokens: rotated without logging anyone out, new tokens
//! tagged with the new key at once, tokens tagged with the old one still known as their
//! session's until those sessions end, and carried by an export with sessions.

use liveuser::store::Store;
use liveuser::token::{RefreshKey, RefreshToken, refresh_key_id};
use serde_json::{Value, json};

use crate::common::{Binary, TestApp, binary_config, cli, post, renew, write_config};

/// The refresh key the server's database holds now.
fn stored_key(app: &TestApp) -> Vec<u8> {
    app.block_on(
        app.service()
            .store()
            .key_or_init("refresh_key", || unreachable!("a server has its key")),
    )
    .unwrap()
}

/// Whether the refresh token `token` carries `key`'s tag.
fn tagged_with(token: &str, key: &[u8]) -> bool {
    RefreshToken::parse(token)
        .unwrap()
        .is_authentic(&RefreshKey::new(key.to_vec()))
}

#[test]
fn rotating_the_refresh_key_logs_nobody_out_and_old_tokens_still_count_as_reuse() {
    let app = TestApp::spawn();
    let a0 = app.login_ok("ann").str("refresh_token");
    let a1 = app.renew(&a0).str("refresh_token");
    let a2 = app.renew(&a1).str("refresh_token");
    let old = stored_key(&app);
    assert!(tagged_with(&a2, &old));

    let now = app.service().now();
    let rotation = app
        .block_on(app.service().rotate_refresh_key(&app.config.token))
        .unwrap();
    let new = stored_key(&app);
    assert_ne!(new, old);
    assert_eq!(rotation.kid, refresh_key_id(&new));
    assert_eq!(rotation.previous_kid, Some(refresh_key_id(&old)));
    assert!(
        (now..now + 2).contains(&(rotation.retire_at - app.config.token.refresh_ttl_secs)),
        "the old key verifies for one session lifetime"
    );

    // The current token, tagged with the old key, renews; its successor and every new
    // session are tagged with the new key.
    let r = app.renew(&a2);
    assert_eq!(r.status, 200, "{}", r.text);
    let a3 = r.str("refresh_token");
    assert!(tagged_with(&a3, &new) && !tagged_with(&a3, &old));
    let b0 = app.login_ok("ben").str("refresh_token");
    assert!(tagged_with(&b0, &new));

    // A token two rotations old, tagged with the old key, is still known as reuse.
    app.renew(&a0).assert_error(401, "unauthenticated");
    app.renew(&a3).assert_error(401, "unauthenticated");
    assert_eq!(app.renew(&b0).status, 200, "other sessions are left alone");
}

/// A renewal's answer lost just before a rotation of the refresh key: its retry, tagged
/// with the old key, must get the successor the old key made, not be taken for reuse.
#[test]
fn a_retry_across_a_refresh_key_rotation_gets_the_same_successor() {
    let app = TestApp::spawn();
    let c0 = app.login_ok("cy").str("refresh_token");
    let c1 = app.renew(&c0).str("refresh_token");
    app.block_on(app.service().rotate_refresh_key(&app.config.token))
        .unwrap();
    let retry = app.renew(&c0);
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.str("refresh_token"), c1);
    let r = app.renew(&c1);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// After a rotation a session that has not renewed since has a current token tagged with
/// the old key. The same generation tagged with the new key is no token a rotation gave
/// anyone: whoever made it holds the new key, and the family is revoked.
#[test]
fn a_token_of_its_sessions_generation_under_another_key_is_taken_for_a_leaked_key() {
    let app = TestApp::spawn();
    let f0 = app.login_ok("flo").str("refresh_token");
    let f1 = app.renew(&f0).str("refresh_token");
    app.block_on(app.service().rotate_refresh_key(&app.config.token))
        .unwrap();
    let forged = RefreshToken::parse(&f0)
        .unwrap()
        .successor(&RefreshKey::new(stored_key(&app)))
        .unwrap()
        .encode();
    assert_ne!(forged, f1);
    app.renew(&forged).assert_error(401, "unauthenticated");
    app.renew(&f1).assert_error(401, "unauthenticated");
}

/// The header of the export `file`.
fn header(file: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(file).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_cli_rotates_the_refresh_key_and_an_export_carries_the_keys_still_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    let login = |base: &str, code: &str| {
        post(base, "/liveuser/Wx/Login", json!({"code": code}), None).str("refresh_token")
    };
    let d0 = login(&server.base, "dee");
    let d1 = renew(&server.base, &d0).str("refresh_token");
    let d2 = renew(&server.base, &d1).str("refresh_token");

    // Running: through the admin API on sled, on the database directly on PostgreSQL.
    let rotated = cli(&config, &["-v", "token", "rotate-refresh-key"]);
    let line = rotated.ok().to_string();
    assert!(
        rotated
            .stderr
            .contains(crate::common::cli_path_to_running_server()),
        "{}",
        rotated.stderr
    );
    assert!(
        line.starts_with("refresh key rotated: new id ")
            && line.contains(" verifies the tokens it tagged until "),
        "{line}"
    );
    let file = dir.path().join("one.jsonl");
    cli(
        &config,
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();
    let first = header(&file);
    let new = unhex(first["refresh_key"].as_str().unwrap());
    let retired = first["retired_refresh_keys"].as_array().unwrap();
    assert_eq!(retired.len(), 1, "{first}");
    let old = unhex(retired[0]["key"].as_str().unwrap());
    assert_eq!(
        line,
        format!(
            "refresh key rotated: new id {}; id {} verifies the tokens it tagged until {}",
            refresh_key_id(&new),
            refresh_key_id(&old),
            line.rsplit("until ").next().unwrap()
        )
    );
    assert!(tagged_with(&d2, &old));
    // Every server tags with the new key at once (on PostgreSQL once it is notified,
    // within a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let e0 = loop {
        let e0 = login(&server.base, "eli");
        if tagged_with(&e0, &new) || std::time::Instant::now() > deadline {
            break e0;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(tagged_with(&e0, &new));
    let r = renew(&server.base, &d2);
    assert_eq!(r.status, 200, "nobody is logged out: {}", r.text);
    let d3 = r.str("refresh_token");
    assert!(server.terminate().success());

    // Stopped: the CLI opens the database itself; --json for scripts.
    let again = cli(&config, &["--json", "token", "rotate-refresh-key"]);
    let answer: Value = serde_json::from_str(again.ok()).unwrap();
    assert_eq!(answer["previous_id"], json!(refresh_key_id(&new)));
    let file = dir.path().join("two.jsonl");
    cli(
        &config,
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();
    let second = header(&file);
    assert_eq!(second["retired_refresh_keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        refresh_key_id(&unhex(second["refresh_key"].as_str().unwrap())),
        answer["id"].as_str().unwrap()
    );

    // Restored into an empty database, the keys come along: d0, tagged with the first
    // key and two rotations old, is reuse there too, and revokes its family.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_config = write_config(fresh.path());
    cli(&fresh_config, &["import", file.to_str().unwrap()]).ok();
    let server = Binary::serve(fresh.path(), &binary_config(fresh.path()), &[]);
    renew(&server.base, &d0).assert_error(401, "unauthenticated");
    renew(&server.base, &d3).assert_error(401, "unauthenticated");
    let r = renew(&server.base, &e0);
    assert_eq!(r.status, 200, "{}", r.text);
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    rotating_the_refresh_key_logs_nobody_out_and_old_tokens_still_count_as_reuse,
    a_retry_across_a_refresh_key_rotation_gets_the_same_successor,
    a_token_of_its_sessions_generation_under_another_key_is_taken_for_a_leaked_key,
    the_cli_rotates_the_refresh_key_and_an_export_carries_the_keys_still_in_force,
);
