//! Durability and data at rest, with the real executable.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Binary, FakeWeChat, WX_APPID, WX_SECRET, binary_config, post};

/// Posts, but a connection that breaks (the server was killed) is `None`.
fn try_post(base: &str, path: &str, body: serde_json::Value, bearer: &str) -> Option<u16> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    );
    agent
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {bearer}"))
        .send(body.to_string().as_bytes())
        .ok()
        .map(|r| r.status().as_u16())
}

/// Acknowledged writes before the kill.
const MIN_ACKED: u64 = 100;

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let mut server = Binary::serve(dir.path(), &config, &[]);

    let users: Vec<(String, String, String)> = (0..8)
        .map(|i| {
            let r = post(
                &server.base,
                "/liveuser/Wx/Login",
                json!({"code": format!("user-{i}")}),
                None,
            );
            assert_eq!(r.status, 200, "{}", r.text);
            (r.str("uid"), r.str("access_token"), r.str("refresh_token"))
        })
        .collect();

    // Each writer writes name "n<k>" for k = 1, 2, … and remembers the last k that
    // was acknowledged with 200.
    let acked: Vec<Mutex<u64>> = users.iter().map(|_| Mutex::new(0)).collect();
    let stop = AtomicBool::new(false);
    let base = server.base.clone();
    thread::scope(|s| {
        for (i, (_, token, _)) in users.iter().enumerate() {
            let (acked, stop, base) = (&acked[i], &stop, &base);
            s.spawn(move || {
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let body = json!({"user": {"name": format!("n{k}")}});
                    match try_post(base, "/liveuser/User/AddUser", body, token) {
                        Some(200) => *acked.lock().unwrap() = k,
                        Some(status) => panic!("write answered {status}"),
                        None => break, // killed mid-request: not acknowledged
                    }
                }
            });
        }
        // Kill once enough writes were acknowledged to mean something, however fast or
        // slow this machine is (writes keep going until the kill, so some are in flight).
        let total = || acked.iter().map(|a| *a.lock().unwrap()).sum::<u64>();
        let started = Instant::now();
        while total() < MIN_ACKED && started.elapsed() < Duration::from_secs(120) {
            thread::sleep(Duration::from_millis(5));
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
    });
    let total: u64 = acked.iter().map(|a| *a.lock().unwrap()).sum();
    assert!(
        total >= MIN_ACKED,
        "only {total} writes were acknowledged in two minutes"
    );

    let server = Binary::serve(dir.path(), &config, &[]);
    let (_, token, _) = &users[0];
    let uids: Vec<&str> = users.iter().map(|u| u.0.as_str()).collect();
    let r = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": uids}),
        Some(token),
    );
    assert_eq!(
        r.status, 200,
        "tokens and sessions survived too: {}",
        r.text
    );
    for (i, user) in r.body["users"].as_array().unwrap().iter().enumerate() {
        let stored: u64 = user["name"]
            .as_str()
            .unwrap()
            .trim_start_matches('n')
            .parse()
            .unwrap_or(0);
        let acked = *acked[i].lock().unwrap();
        assert!(
            stored >= acked,
            "user {i}: acknowledged n{acked}, found n{stored}"
        );
    }
    for (_, _, refresh) in &users {
        let r = post(
            &server.base,
            "/liveuser/Wx/RenewToken",
            json!({"refresh_token": refresh}),
            None,
        );
        assert_eq!(r.status, 200, "an acknowledged login survived: {}", r.text);
    }
}

#[test]
fn no_refresh_token_plaintext_is_stored_in_the_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let mut server = Binary::serve(dir.path(), &config, &[]);
    let mut tokens = Vec::new();
    for i in 0..20 {
        let r = post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": format!("u{i}")}),
            None,
        );
        tokens.push(r.str("refresh_token"));
        let r = post(
            &server.base,
            "/liveuser/Wx/RenewToken",
            json!({"refresh_token": r.str("refresh_token")}),
            None,
        );
        assert_eq!(r.status, 200);
        tokens.push(r.str("refresh_token"));
    }
    assert!(server.terminate().success());

    let mut files = Vec::new();
    let mut stack = vec![dir.path().join("db")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.push(std::fs::read(entry.path()).unwrap());
            }
        }
    }
    assert!(!files.is_empty());
    use base64::Engine;
    for token in &tokens {
        let body = token.trim_start_matches("lvrt_");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap();
        for file in &files {
            assert!(
                !contains(file, body.as_bytes()),
                "a refresh token is stored in plaintext"
            );
            assert!(
                !contains(file, &raw),
                "a refresh token's raw bytes are stored"
            );
            // Nor the seed its whole family shares (the session id is only its hash).
            assert!(
                !contains(file, &raw[..32]),
                "a refresh token's seed is stored"
            );
        }
    }
}

#[test]
fn no_log_line_holds_the_wechat_secret_a_code_or_a_token_even_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let wx = FakeWeChat::start();
    let config = format!(
        "{}appid = \"{WX_APPID}\"\napi_base = \"{}\"\ntimeout_ms = 500\n[log]\nlevel = \"trace\"\n",
        binary_config(dir.path()).replace("mode = \"mock\"", "mode = \"wechat\""),
        wx.base
    );
    let server = Binary::serve(dir.path(), &config, &[("LIVEUSER_WX_SECRET", WX_SECRET)]);
    let mut secrets = vec![WX_SECRET.to_string(), "c2Vzc2lvbi1rZXk=".to_string()];
    // Every code carries a tag no log line could hold by chance.
    let codes: Vec<String> = [
        "ok-alice",
        "e40029",
        "e40163",
        "e45011",
        "e40226",
        "busy-once-x",
        "busy-always",
        "http500",
        "garbage",
        "hang",
    ]
    .iter()
    .enumerate()
    .map(|(i, code)| format!("{code}~zq{i}logincode"))
    .collect();
    let mut reused = false;
    for code in &codes {
        let r = post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": code}),
            None,
        );
        assert!(!r.text.contains(WX_SECRET));
        if r.status != 200 {
            continue;
        }
        let access = r.str("access_token");
        let first = r.str("refresh_token");
        secrets.push(access.clone());
        secrets.push(first.clone());
        // Bearer calls carry the access token in a header.
        let w = post(
            &server.base,
            "/liveuser/User/AddUser",
            json!({"user": {"name": "Alice"}}),
            Some(&access),
        );
        assert_eq!(w.status, 200, "{}", w.text);
        let q = post(
            &server.base,
            "/liveuser/User/QueryUser",
            json!({"uids": [r.str("uid")]}),
            Some(&access),
        );
        assert_eq!(q.status, 200, "{}", q.text);
        let renew = |token: &str| {
            post(
                &server.base,
                "/liveuser/Wx/RenewToken",
                json!({ "refresh_token": token }),
                None,
            )
        };
        let second = renew(&first);
        let third = renew(&second.str("refresh_token"));
        secrets.push(second.str("refresh_token"));
        secrets.push(third.str("refresh_token"));
        secrets.push(third.str("access_token"));
        // The first token is two rotations old: presenting it is reuse, and the reuse
        // warning is logged.
        renew(&first).assert_error(401, "unauthenticated");
        reused = true;
    }
    assert!(reused, "some login went through and a reuse was triggered");
    // A refused access token is one of liveuser's own debug events.
    post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": ["x"]}),
        Some("not.a.token"),
    )
    .assert_error(401, "unauthenticated");
    thread::sleep(Duration::from_millis(200));
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG") && l.contains("liveuser::")),
        "the log level took effect:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("reuse")),
        "the reuse was logged:\n{log}"
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log holds a secret or token:\n{log}"
        );
    }
    assert!(
        !log.contains("logincode"),
        "the log holds a login code (one of {codes:?}):\n{log}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_log_directive_can_make_the_http_client_log_the_wechat_secret_or_a_code() {
    let wx = FakeWeChat::start();
    for (i, level) in [
        "info,ureq::run=debug,ureq::util=trace",
        "trace",
        "trace,ureq=trace,ureq_proto=trace,rustls=trace,warp=trace,sled=trace",
    ]
    .iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "{}appid = \"{WX_APPID}\"\napi_base = \"{}\"\ntimeout_ms = 500\n[log]\nlevel = \"{level}\"\n",
            binary_config(dir.path()).replace("mode = \"mock\"", "mode = \"wechat\""),
            wx.base
        );
        let server = Binary::serve(dir.path(), &config, &[("LIVEUSER_WX_SECRET", WX_SECRET)]);
        let code = format!("ok-alice~zq{i}directivecode");
        let r = post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({ "code": code }),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(wx.calls(&code), 1, "WeChat was asked");
        thread::sleep(Duration::from_millis(200));
        let log = server.log();
        assert!(log.contains("liveuser listening"), "{level}: {log}");
        for secret in [
            WX_SECRET,
            "directivecode",
            "c2Vzc2lvbi1rZXk=",
            &r.str("access_token"),
            &r.str("refresh_token"),
        ] {
            assert!(
                !log.contains(secret),
                "with log.level = {level:?} the log holds {secret:?}:\n{log}"
            );
        }
    }
}
