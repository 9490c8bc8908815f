//! Signing-key rotation without logging anyone out: tokens under the previous key verify
//! until they expire, new tokens carry the new kid, and a retired key verifies nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use liveuser::secret::Secret;
use serde_json::{Value, json};

use crate::common::{Binary, CliRun, TestApp, binary_config, jwt_claims, post};

const OLD: &str = "the-old-signing-secret-32-bytes-long!";
const NEW: &str = "the-new-signing-secret-32-bytes-long!";

fn kid(token: &str) -> String {
    let part = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// A token for `claims` signed with `key` under `kid`.
fn forge(kid: &str, claims: &Value, key: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key).unwrap()).unwrap()
}

#[test]
fn a_configured_secret_moved_to_previous_secret_keeps_old_tokens_valid_until_they_expire() {
    let mut app = TestApp::spawn_with(|c| c.token.secret = Secret::new(OLD.into()));
    let old = app.login_ok("alice");
    let old_token = old.str("access_token");
    let old_kid = kid(&old_token);

    app.config.token.secret = Secret::new(NEW.into());
    app.config.token.previous_secret = Secret::new(OLD.into());
    app.restart();

    assert_eq!(
        app.query(&old_token, &[]).status,
        200,
        "old token still valid"
    );
    let fresh = app.login_ok("alice").str("access_token");
    assert_ne!(kid(&fresh), old_kid, "new tokens carry the new kid");
    assert_eq!(app.query(&fresh, &[]).status, 200);

    // The old key verifies only what it could have signed before the rotation: a token
    // minted with it afterwards, living past the key's retirement, is refused.
    let claims = jwt_claims(&old_token);
    let mut long = claims.clone();
    long["exp"] = json!(claims["exp"].as_u64().unwrap() + 3600);
    app.query(&forge(&old_kid, &long, OLD.as_bytes()), &[])
        .assert_error(401, "unauthenticated");

    // One access-token lifetime later the old key is retired, even across a restart.
    let exp = claims["exp"].as_u64().unwrap();
    app.set_clock(exp - 1);
    assert_eq!(app.query(&old_token, &[]).status, 200);
    app.set_clock(exp);
    app.query(&old_token, &[])
        .assert_error(401, "unauthenticated");
    app.restart();
    let mut within = claims.clone();
    within["exp"] = json!(app.service().now() + 60);
    app.query(&forge(&old_kid, &within, OLD.as_bytes()), &[])
        .assert_error(401, "unauthenticated");
    assert_eq!(
        app.query(&app.login_ok("alice").str("access_token"), &[])
            .status,
        200
    );
}

#[test]
fn rotating_a_generated_key_on_a_running_server_takes_effect_at_once() {
    let app = TestApp::spawn();
    let before = app.login_ok("bob").str("access_token");
    let store = app.service().store().clone();
    let old_key = app
        .block_on(liveuser::store::Store::key_or_init(
            store.as_ref(),
            "signing_key", // the generated signing key's name among the stored keys
            Vec::new,
        ))
        .unwrap();

    let rotation = app
        .block_on(app.service().rotate_signing_key(&app.config.token))
        .unwrap();
    assert_eq!(
        rotation.previous_kid.as_deref(),
        Some(kid(&before).as_str())
    );

    let after = app.login_ok("bob").str("access_token");
    assert_eq!(kid(&after), rotation.kid);
    assert_ne!(kid(&after), kid(&before));
    assert_eq!(app.query(&before, &[]).status, 200, "no restart needed");
    assert_eq!(app.query(&after, &[]).status, 200);

    // A second rotation keeps both older keys until each retires.
    app.advance(60);
    let second = app
        .block_on(app.service().rotate_signing_key(&app.config.token))
        .unwrap();
    assert_eq!(second.previous_kid.as_deref(), Some(rotation.kid.as_str()));
    assert_eq!(app.query(&before, &[]).status, 200);
    assert_eq!(app.query(&after, &[]).status, 200);

    // The first key retires access_ttl after the first rotation: even a token freshly
    // minted with it (the stolen-old-key case) is refused from then on.
    app.advance(7200 - 60);
    let mut claims = jwt_claims(&before);
    claims["exp"] = json!(app.service().now() + 30);
    app.query(&forge(&kid(&before), &claims, &old_key), &[])
        .assert_error(401, "unauthenticated");
}

#[test]
fn a_configured_secret_refuses_the_generated_key_rotation() {
    let app = TestApp::spawn_with(|c| c.token.secret = Secret::new(OLD.into()));
    let err = app
        .block_on(app.service().rotate_signing_key(&app.config.token))
        .unwrap_err();
    assert!(err.to_string().contains("token.previous_secret"), "{err}");
}

fn run_cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
        .env_remove(crate::common::POSTGRES_URL_VAR)
        .arg("--config")
        .arg(dir.join("liveuser.toml"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("liveuser runs")
}

#[test]
fn the_cli_rotates_a_generated_key_of_a_running_server_and_of_a_stopped_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let mut server = Binary::serve(dir.path(), &config, &[]);
    let login = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "carol"}),
        None,
    );
    let first = login.str("access_token");

    // With the server running, the rotation goes through its admin API and is in force
    // at once: the next login carries the new kid, the old token keeps working.
    let live = run_cli(dir.path(), &["-v", "token", "rotate-key"]);
    let stdout = String::from_utf8_lossy(&live.stdout).into_owned();
    assert!(
        live.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&live.stderr)
    );
    assert!(
        String::from_utf8_lossy(&live.stderr).contains(crate::common::cli_path_to_running_server())
    );
    assert!(
        stdout.contains(&kid(&first)),
        "names the replaced kid: {stdout}"
    );
    // Through the admin API (sled) the server switches before the command answers; on
    // PostgreSQL the command writes the database and every server switches when it is
    // notified, within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let second = loop {
        let second = post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": "carol"}),
            None,
        )
        .str("access_token");
        if kid(&second) != kid(&first)
            || crate::common::backend() == crate::common::Backend::Sled
            || std::time::Instant::now() > deadline
        {
            break second;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_ne!(kid(&second), kid(&first));
    assert!(
        stdout.contains(&kid(&second)),
        "names the new kid: {stdout}"
    );
    let q = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": []}),
        Some(&first),
    );
    assert_eq!(
        q.status, 200,
        "a token under the old key still works: {}",
        q.text
    );
    assert!(server.terminate().success());

    // With the server stopped, the CLI opens the database itself.
    let done = run_cli(dir.path(), &["-v", "token", "rotate-key"]);
    let stdout = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("directly"));
    assert!(
        stdout.contains(&kid(&second)),
        "names the replaced kid: {stdout}"
    );

    let server = Binary::serve(dir.path(), &config, &[]);
    for token in [&first, &second] {
        let q = post(
            &server.base,
            "/liveuser/User/QueryUser",
            json!({"uids": []}),
            Some(token),
        );
        assert_eq!(
            q.status, 200,
            "tokens under earlier keys still work: {}",
            q.text
        );
    }
    let third = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "carol"}),
        None,
    )
    .str("access_token");
    assert!(stdout.contains(&kid(&third)), "names the new kid: {stdout}");
    // Refresh tokens are untouched by a signing-key rotation.
    let renewed = post(
        &server.base,
        "/liveuser/Wx/RenewToken",
        json!({"refresh_token": login.str("refresh_token")}),
        None,
    );
    assert_eq!(renewed.status, 200, "{}", renewed.text);
}

fn run_cli_with(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> CliRun {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
        .env_remove(crate::common::POSTGRES_URL_VAR)
        .arg("--config")
        .arg(dir.join("liveuser.toml"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("liveuser runs");
    CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn admin_commands_without_the_servers_secret_refuse_to_mint_or_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let env = [("LIVEUSER_TOKEN_SECRET", OLD)];
    let mut server = Binary::serve(dir.path(), &config, &env);
    let uid = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "dora"}),
        None,
    )
    .str("uid");
    assert!(server.terminate().success());

    // Without the server's environment, a minted token would be signed with a key the
    // server does not use: refused with one line that says what to do.
    for args in [
        vec!["token", "mint", uid.as_str()],
        vec!["token", "rotate-key"],
    ] {
        let r = run_cli_with(dir.path(), &[], &args);
        let line = r.failed();
        assert!(line.contains("LIVEUSER_TOKEN_SECRET"), "{args:?}: {line}");
        assert!(r.stdout.is_empty(), "no token printed: {}", r.stdout);
    }
    let wrong = "another-secret-that-is-32-bytes-long!";
    let r = run_cli_with(
        dir.path(),
        &[("LIVEUSER_TOKEN_SECRET", wrong)],
        &["token", "mint", &uid],
    );
    assert!(r.failed().contains("different token.secret"), "{r:?}");
    assert!(!r.stderr.contains(OLD) && !r.stderr.contains(wrong));

    // With it, the token works once the server is back.
    let token = run_cli_with(dir.path(), &env, &["token", "mint", &uid])
        .ok()
        .trim()
        .to_string();
    let server = Binary::serve(dir.path(), &config, &env);
    let q = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": [uid]}),
        Some(&token),
    );
    assert_eq!(q.status, 200, "{}", q.text);
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    a_configured_secret_moved_to_previous_secret_keeps_old_tokens_valid_until_they_expire,
    rotating_a_generated_key_on_a_running_server_takes_effect_at_once,
    a_configured_secret_refuses_the_generated_key_rotation,
    the_cli_rotates_a_generated_key_of_a_running_server_and_of_a_stopped_one,
    admin_commands_without_the_servers_secret_refuse_to_mint_or_rotate,
);
