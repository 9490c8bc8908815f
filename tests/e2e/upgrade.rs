//! A database written by the release before storage format 2 (`tests/fixtures/format1`,
//! see its README) is upgraded at start: its users, identities, signing keys and live
//! sessions carry over, and the refresh tokens its clients hold keep working.

use std::sync::Arc;

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{Binary, TestApp, binary_config, cli, post};
use liveuser::clock::{Clock, OffsetClock};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1");

/// A copy of the fixture's database in a fresh directory (as `db`), and what the
/// program that wrote it recorded.
pub fn fixture() -> (TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(FIXTURE).join("db"),
        &dir.path().join("db"),
    );
    let facts = std::fs::read_to_string(std::path::Path::new(FIXTURE).join("facts.json")).unwrap();
    (dir, serde_json::from_str(&facts).unwrap())
}

/// Copies a database directory, private to its user as liveuser requires (a database
/// upgraded in place is made private by its operator first; liveuser says so).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

/// A refresh token of the fixture, from the hex of its bytes.
fn token(hex: &Value) -> String {
    use base64::Engine;
    let hex = hex.as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    format!(
        "lvrt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Text from its hex.
fn text(hex: &Value) -> String {
    let hex = hex.as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// A clock a minute after the fixture was written, so its sessions are as live as they
/// were then, whenever the test runs.
fn clock_at_fixture(facts: &Value) -> Arc<OffsetClock> {
    let clock = Arc::new(OffsetClock::new());
    let written = facts["written_at_ms"].as_u64().unwrap() as i64;
    clock.advance_ms(written + 60_000 - clock.now_ms() as i64);
    clock
}

#[test]
fn a_database_of_the_previous_release_is_upgraded_at_start_and_its_clients_carry_on() {
    let (dir, facts) = fixture();
    let clock = clock_at_fixture(&facts);
    let mut app = TestApp::spawn_in(dir, clock);
    let alice = &facts["alice"];
    let uid = alice["uid"].as_str().unwrap();

    // The access token issued before names the session's old id: refused, and the
    // client renews with its refresh token, which still works.
    app.query(&text(&alice["access"]), &[])
        .assert_error(401, "unauthenticated");
    // Tokens the current one replaced cannot be recognised any more: refused, and they
    // revoke nothing.
    for old in ["older", "previous"] {
        app.renew(&token(&alice[old]))
            .assert_error(401, "unauthenticated");
    }
    let renewed = app.renew(&token(&alice["current"]));
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    assert_eq!(renewed.str("uid"), uid);
    let next = renewed.str("refresh_token");
    assert_eq!(next.len(), "lvrt_".len() + 70, "a format-2 successor");
    let access = renewed.str("access_token");

    // The profile came over as it was.
    let q = app.query(&access, &[uid]);
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["users"][0]["name"], "Alice 名前");
    assert_eq!(q.body["users"][0]["agent"], "iPhone");
    assert_eq!(q.body["users"][0]["avatar"], "https://a.example/a.png");

    // bob's two sessions both renew; carol's, revoked before, stays revoked.
    for hex in facts["bob"]["sessions"].as_array().unwrap() {
        let r = app.renew(&token(hex));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["uid"], facts["bob"]["uid"]);
    }
    app.renew(&token(&facts["carol"]["current"]))
        .assert_error(401, "unauthenticated");

    // Identities came over: the same code logs in as the same user.
    assert_eq!(app.login_ok("alice").str("uid"), uid);

    // A second start finds the database upgraded and changes nothing.
    app.restart();
    let r = app.renew(&next);
    assert_eq!(r.status, 200, "after a restart: {}", r.text);
    assert_eq!(r.str("uid"), uid);
}

#[test]
fn the_admin_commands_work_on_an_upgraded_database_and_the_old_key_still_verifies() {
    let (dir, facts) = fixture();
    // The CLI opens the database itself: it upgrades it as the server would.
    let config = crate::common::write_config(dir.path());
    let listed: Value =
        serde_json::from_str(cli(&config, &["session", "list", "--json"]).ok()).unwrap();
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 4, "alice, bob twice, carol: {listed}");
    let got = cli(
        &config,
        &["user", "get", facts["alice"]["uid"].as_str().unwrap()],
    );
    assert!(got.ok().contains("Alice 名前"), "{}", got.stdout);
    // The signing key rotated before the upgrade is still kept as retired.
    let rotated = cli(&config, &["token", "rotate-key"]);
    rotated.ok();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let r = post(
        &server.base,
        "/liveuser/Wx/Login",
        serde_json::json!({"code": "bob"}),
        None,
    );
    assert_eq!(r.body["uid"], facts["bob"]["uid"]);
}
