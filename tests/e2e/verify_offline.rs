//! The offline verifiers a backend developer copies — `examples/verify/verify.mjs` (Node's
//! built-in WebCrypto) and `examples/verify/verify.py` (PyJWT) — run against a real
//! server: they verify a fresh token from the JWKS alone, refuse a tampered one and a
//! key-confusion forgery, and keep verifying across a rotation with the JWKS they cached
//! before it (the new key is published before it signs).
//!
//! Without node or PyJWT the test says so and does not run — except in CI (`CI` set),
//! where it fails: `.ci/run` installs PyJWT, and node is on every machine of the project.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{TestApp, jwt_claims};

const NODE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify/verify.mjs");
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify/verify.py");

/// The verifiers that can run here: (name, program, script). Missing ones fail in CI.
fn verifiers() -> Vec<(&'static str, &'static str, &'static str)> {
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    if runs("node", &["--version"]) {
        found.push(("node", "node", NODE));
    } else {
        missing.push("node (18 or later)");
    }
    if runs("python3", &["-c", "import jwt, cryptography"]) {
        found.push(("python", "python3", PYTHON));
    } else {
        missing.push("PyJWT (pip install 'pyjwt[crypto]')");
    }
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "missing for the offline-verification test: {missing:?}; .ci/run installs them"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: the offline verifiers {missing:?} did not run: install them"
        );
    }
    found
}

/// Runs one verifier on `token` with the JWKS at `source`: the claims, or why refused.
fn run(program: &str, script: &str, source: &str, token: &str) -> Result<Value, String> {
    let out = Command::new(program)
        .arg(script)
        .arg(source)
        .arg(token)
        .output()
        .expect("the verifier runs");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(serde_json::from_str(&stdout).expect("claims as JSON")),
        Some(1) => {
            assert!(stdout.starts_with("refused: "), "{stdout}");
            Err(stdout)
        }
        other => panic!(
            "{program} {script} exited {other:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn save_jwks(app: &TestApp, dir: &Path, name: &str) -> String {
    let text = app.raw("GET", "/.well-known/jwks.json", &[], b"").text;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn node_and_pyjwt_verify_offline_refuse_forgeries_and_keep_verifying_across_a_rotation() {
    let verifiers = verifiers();
    if verifiers.is_empty() {
        return;
    }
    // A short wait before a new key signs, so the test waits it out in real time: the
    // verifiers check exp (and PyJWT iat) against the real clock.
    let app = TestApp::spawn_with(|c| {
        c.token.jwks_max_age_secs = 1;
        c.token.key_publish_secs = 2;
    });
    let dir = tempfile::tempdir().unwrap();
    let login = app.login_ok("alice");
    let token = login.str("access_token");
    let url = format!("{}/.well-known/jwks.json", app.base);
    let cached = save_jwks(&app, dir.path(), "before.json");

    let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let mut claims = jwt_claims(&token);
    claims["sub"] = json!("mallory");
    let tampered = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    // Key confusion: HS256, keyed with the published JWK's bytes.
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(&cached).unwrap()).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"JWT","alg":"HS256","kid":"{kid}"}}"#));
    let input = format!("{header}.{p}");
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(jwks["keys"][0].to_string().as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let confused = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    let none = format!(
        "{}.{p}.",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"JWT","alg":"none","kid":"{kid}"}}"#))
    );

    for (name, program, script) in &verifiers {
        for source in [&cached, &url] {
            let verified = run(program, script, source, &token)
                .unwrap_or_else(|e| panic!("{name} with {source}: {e}"));
            assert_eq!(verified["sub"], login.str("uid").as_str(), "{name}");
        }
        for (what, forged) in [
            ("tampered", &tampered),
            ("HS256 with the JWK", &confused),
            ("none", &none),
        ] {
            assert!(
                run(program, script, &cached, forged).is_err(),
                "{name} accepted the {what} token"
            );
        }
    }

    // A rotation: the new key is published now and signs after the wait, so a JWKS
    // cached after the rotation (and before the switch) verifies the new key's tokens.
    let rotation = app
        .block_on(app.service().rotate_signing_key(&app.config.token, false))
        .unwrap();
    let cached_after = save_jwks(&app, dir.path(), "after.json");
    let standby: Value =
        serde_json::from_str(&std::fs::read_to_string(&cached_after).unwrap()).unwrap();
    assert_eq!(
        standby["keys"].as_array().unwrap().len(),
        2,
        "published before it signs"
    );
    while app.service().now() < rotation.signs_at {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let fresh = app.login_ok("alice").str("access_token");
    let fresh_header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(fresh.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let fresh_kid = fresh_header["kid"].as_str().unwrap();
    assert_eq!(fresh_kid, rotation.kid);
    for (name, program, script) in &verifiers {
        let verified = run(program, script, &cached_after, &fresh)
            .unwrap_or_else(|e| panic!("{name} across the rotation: {e}"));
        assert_eq!(verified["sub"], login.str("uid").as_str());
        // The copy from before the rotation lacks the key: refused, as it should be.
        assert!(run(program, script, &cached, &fresh).is_err(), "{name}");
        // And the old key's token still verifies with either copy.
        assert!(
            run(program, script, &cached_after, &token).is_ok(),
            "{name}"
        );
    }
}

crate::on_postgres!(
    node_and_pyjwt_verify_offline_refuse_forgeries_and_keep_verifying_across_a_rotation,
);
