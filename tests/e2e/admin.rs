//! The admin CLI, with the server running (through its admin API) and stopped (on the
//! database directly), and the admin API's own guard.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Binary, TestApp, binary_config, cli, login, post};

#[test]
fn every_read_command_prints_the_same_with_the_server_running_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    let alice = login(&server.base, "alice");
    let bob = login(&server.base, "bob");
    login(&server.base, "bob"); // a second session
    let r = post(
        &server.base,
        "/liveuser/User/AddUser",
        json!({"user": {"name": "Alice", "agent": "iPhone", "avatar": "https://a.example/x.png"}}),
        Some(&alice.str("access_token")),
    );
    assert_eq!(r.status, 200);
    let (a, b) = (alice.str("uid"), bob.str("uid"));
    let first = a.clone().min(b.clone());

    let commands: Vec<Vec<&str>> = vec![
        vec!["user", "get", &a, &b],
        vec!["--json", "user", "get", &b, &a],
        vec!["user", "list"],
        vec!["user", "list", "--limit", "1"],
        vec!["user", "list", "--after", &first],
        vec!["--json", "user", "list", "--limit", "1"],
        vec!["session", "list"],
        vec!["session", "list", "--uid", &b],
        vec!["session", "list", "--limit", "2"],
        vec!["--json", "session", "list", "--uid", &a],
    ];
    let running: Vec<_> = commands.iter().map(|c| cli(&config, c)).collect();
    let verbose = cli(&config, &["-v", "user", "list"]);
    assert!(
        verbose
            .stderr
            .contains(crate::common::cli_path_to_running_server()),
        "-v names the path: {}",
        verbose.stderr
    );
    assert!(
        running[0].ok().contains("Alice") && running[0].ok().contains("iPhone"),
        "{}",
        running[0].stdout
    );
    assert!(running[3].ok().contains("(more: continue with --after"));
    let sessions = running[6].ok();
    assert!(sessions.starts_with("SID"), "{sessions}");
    assert_eq!(sessions.lines().count(), 4, "three sessions: {sessions}");
    assert_eq!(running[7].ok().lines().count(), 3, "bob's two sessions");

    assert!(server.terminate().success());
    let stopped: Vec<_> = commands.iter().map(|c| cli(&config, c)).collect();
    let verbose = cli(&config, &["-v", "user", "list"]);
    assert!(verbose.stderr.contains("directly"), "{}", verbose.stderr);
    for ((command, up), down) in commands.iter().zip(&running).zip(&stopped) {
        assert_eq!(up.ok(), down.ok(), "`{}` differs", command.join(" "));
    }
}

#[test]
fn write_commands_work_and_fail_alike_with_the_server_running_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config_text = binary_config(dir.path());
    let mut server = Binary::serve(dir.path(), &config_text, &[]);
    let config = dir.path().join("liveuser.toml");
    let alice = login(&server.base, "alice");
    let failures = |config: &std::path::Path| -> Vec<String> {
        [
            vec!["user", "put", "carol", "--avatar", "ftp://x"],
            vec!["user", "put", "bad uid", "--name", "x"],
            vec!["token", "mint", "nobody"],
            vec!["token", "mint", "carol", "--ttl", "10"],
            vec!["session", "revoke", &"f".repeat(32)],
            vec!["session", "revoke", "not-a-sid"],
            vec!["user", "get", "carol", "nobody"],
        ]
        .iter()
        .map(|c| cli(config, c).failed().to_string())
        .collect()
    };

    // Running: through the admin API.
    let put = cli(
        &config,
        &["user", "put", "carol", "--name", "Carol", "--agent", "cli"],
    );
    assert!(put.ok().contains("carol  Carol  cli"), "{}", put.stdout);
    let failed_running = failures(&config);
    let minted = cli(&config, &["token", "mint", "carol", "--ttl", "120"]);
    let token = minted.ok().trim().to_string();
    assert!(minted.stderr.contains("session"), "{}", minted.stderr);
    let r = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": ["carol"]}),
        Some(&token),
    );
    assert_eq!(
        r.status, 200,
        "a minted token passes the live-session check"
    );
    assert_eq!(r.body["users"][0]["name"], "Carol");
    let minted: Value =
        serde_json::from_str(cli(&config, &["--json", "token", "mint", "carol"]).ok()).unwrap();
    let sid = minted["sid"].as_str().unwrap();
    let revoked = cli(&config, &["session", "revoke", sid]);
    assert_eq!(revoked.ok(), "revoked 1 session; 0 had already ended\n");
    let r = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": ["carol"]}),
        Some(minted["access_token"].as_str().unwrap()),
    );
    r.assert_error(401, "unauthenticated");
    let revoked = cli(&config, &["session", "revoke", "--uid", &alice.str("uid")]);
    assert_eq!(revoked.ok(), "revoked 1 session; 0 had already ended\n");
    let r = post(
        &server.base,
        "/liveuser/Wx/RenewToken",
        json!({"refresh_token": alice.str("refresh_token")}),
        None,
    );
    r.assert_error(401, "unauthenticated");

    // Stopped: on the database directly; same answers and same failures.
    assert!(server.terminate().success());
    let put = cli(&config, &["user", "put", "dave", "--name", "Dave"]);
    assert!(put.ok().contains("dave  Dave"), "{}", put.stdout);
    assert_eq!(failures(&config), failed_running);
    let token = cli(&config, &["token", "mint", "dave"])
        .ok()
        .trim()
        .to_string();
    let all = cli(&config, &["--json", "session", "revoke", "--all"]);
    let all: Value = serde_json::from_str(all.ok()).unwrap();
    assert_eq!(all["revoked"], 2, "carol's first mint and dave's: {all}");
    let token2 = cli(&config, &["token", "mint", "dave"])
        .ok()
        .trim()
        .to_string();

    let server = Binary::serve(dir.path(), &config_text, &[]);
    for (t, status) in [(&token, 401), (&token2, 200)] {
        let r = post(
            &server.base,
            "/liveuser/User/QueryUser",
            json!({"uids": ["dave"]}),
            Some(t),
        );
        assert_eq!(r.status, status, "{}", r.text);
    }
}

#[test]
fn the_admin_api_refuses_a_missing_or_wrong_token_and_is_not_on_the_public_listener() {
    let app = TestApp::spawn();
    let file = app.dir.path().join("db.admin-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }
    let endpoint: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = endpoint["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    let admin = format!("http://{}", app.admin_addr.unwrap());
    let body = json!({"after": null, "limit": 10});
    for bearer in [None, Some("wrong"), Some(&token[1..]), Some("")] {
        let r = post(&admin, "/admin/v1/user-list", body.clone(), bearer);
        assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{}", r.text);
    }
    let r = post(&admin, "/admin/v1/no-such-thing", body.clone(), None);
    assert_eq!(
        r.status, 401,
        "unknown paths are refused before routing too"
    );
    let r = post(&admin, "/admin/v1/user-list", body.clone(), Some(token));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["users"].is_array());

    for path in ["/admin/v1/user-list", "/admin/v1/export"] {
        let r = post(&app.base, path, body.clone(), Some(token));
        r.assert_error(404, "bad_route");
    }
    drop(app);
    assert!(!file.exists(), "the token file is removed at shutdown");
}

/// Reads what the server sends on `stream` until it closes the connection, for at most
/// `wait`: the text, and whether it closed.
fn until_closed(stream: &mut impl std::io::Read, wait: Duration) -> (String, bool) {
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true, // reset: closed too
        }
        if started.elapsed() > wait {
            break false;
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

fn endpoint_file(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("db.admin-token")).unwrap()).unwrap()
}

/// Other local users can connect to the admin port (it is loopback TCP) but must not
/// lock the operator out: a request without the token is answered 401 and its
/// connection closed, and connections that say nothing fill the port's per-address cap
/// in vain, since the CLI goes through the admin socket.
#[test]
fn connections_to_the_admin_port_without_the_token_cannot_lock_the_cli_out() {
    use std::io::Write;
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    // Silent connections are not cut by time here: they hold their places all along.
    let config_text = binary_config(dir.path()).replacen(
        "[server]\n",
        "[server]\nfirst_request_timeout_ms = 60000\nheader_read_timeout_ms = 60000\n",
        1,
    );
    let server = Binary::serve(dir.path(), &config_text, &[]);
    let config = dir.path().join("liveuser.toml");
    login(&server.base, "alice");
    let admin: std::net::SocketAddr = endpoint_file(dir.path())["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let connect = || {
        let s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s
    };

    // As many keep-alive requests without the token as the address may have open (with
    // no body, so nothing is left unread that would close them anyway): each is
    // answered 401 and its connection closed.
    let request = b"POST /admin/v1/session-list HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let mut refused: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = connect();
            s.write_all(request).unwrap();
            s
        })
        .collect();
    for s in &mut refused {
        let (answer, closed) = until_closed(s, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(closed, "a refused connection is kept open: {answer}");
    }
    // The server frees a place when its side of the connection is done.
    std::thread::sleep(Duration::from_millis(200));

    // Connections that say nothing fill the address's places on the port …
    let _silent: Vec<TcpStream> = (0..64).map(|_| connect()).collect();
    let (_, closed) = until_closed(&mut connect(), Duration::from_secs(5));
    assert!(closed, "the port's per-address cap is full");
    // … and the CLI needs none of them.
    let listed = cli(&config, &["-v", "session", "list"]);
    assert_eq!(listed.ok().lines().count(), 2, "{}", listed.stdout);
    assert!(
        listed.stderr.contains("on the admin socket"),
        "{}",
        listed.stderr
    );
}

/// The admin socket is a second door to the same API, for the server's own user only
/// (mode 0600), and behind the same token.
#[test]
fn the_admin_socket_is_private_to_the_servers_user_and_wants_the_token_too() {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    let app = TestApp::spawn();
    app.login_ok("alice");
    let endpoint = endpoint_file(app.dir.path());
    let token = endpoint["token"].as_str().unwrap().to_string();
    let socket = std::path::PathBuf::from(endpoint["socket"].as_str().unwrap());
    assert_eq!(socket, app.dir.path().join("db.admin.sock"));
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let ask = |authorization: Option<&str>| {
        let body = r#"{"after": null, "limit": 10}"#;
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let authorization = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /admin/v1/user-list HTTP/1.1\r\nHost: x\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A refusal may come, and the connection close, before the body is read.
        let _ = stream.write_all(request.as_bytes());
        until_closed(&mut stream, Duration::from_secs(5))
    };
    for refused in [None, Some("Bearer wrong".to_string()), Some(token.clone())] {
        let (answer, closed) = ask(refused.as_deref());
        assert!(answer.starts_with("HTTP/1.1 401"), "{refused:?}: {answer}");
        assert!(answer.contains(r#""code":"unauthenticated""#), "{answer}");
        assert!(closed, "{answer}");
    }
    // Kept open for the next request, like any keep-alive connection.
    let (answer, closed) = ask(Some(&format!("Bearer {token}")));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""users":[{"uid":"#), "{answer}");
    assert!(!closed, "an authenticated connection is kept: {answer}");

    drop(app);
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn a_socket_left_by_a_killed_server_is_replaced_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let config_text = binary_config(dir.path());
    let mut server = Binary::serve(dir.path(), &config_text, &[]);
    login(&server.base, "alice");
    server.kill9();
    let socket = dir.path().join("db.admin.sock");
    assert!(socket.exists(), "a killed server leaves its socket");

    let _server = Binary::serve(dir.path(), &config_text, &[]);
    let listed = cli(
        &dir.path().join("liveuser.toml"),
        &["-v", "session", "list"],
    );
    assert_eq!(listed.ok().lines().count(), 2, "{}", listed.stdout);
    assert!(
        listed.stderr.contains("on the admin socket"),
        "{}",
        listed.stderr
    );
}

#[test]
fn a_storage_path_too_long_for_the_admin_socket_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(&dir);
    config.storage.path = dir.path().join("d".repeat(100));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime
        .block_on(liveuser::app::start(
            &config,
            std::sync::Arc::new(liveuser::clock::SystemClock),
        ))
        .err()
        .expect("the start is refused");
    let message = refused.to_string();
    assert!(message.contains("admin socket"), "{message}");
    assert!(message.contains(&"d".repeat(100)), "{message}");
    assert!(message.contains("shorter storage.path"), "{message}");
}

#[test]
fn usage_errors_and_failures_are_one_line_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::common::write_config(dir.path());
    let r = cli(&config, &["user", "list"]);
    assert!(r.failed().contains("no database at"), "{r:?}");
    assert!(
        cli(&config, &["session", "revoke"])
            .failed()
            .contains("--all")
    );
    assert!(
        cli(&config, &["session", "revoke", "--all", "--uid", "x"])
            .failed()
            .contains("cannot be used with")
    );
    assert!(
        cli(&config, &["user", "frobnicate"])
            .failed()
            .contains("frobnicate")
    );
    for group in ["user", "session", "token"] {
        let line = cli(&config, &[group]).failed().to_string();
        assert_eq!(
            line,
            format!(
                "liveuser: `liveuser {group}` needs a subcommand (try `liveuser {group} --help`)"
            )
        );
    }
    let help = cli(&config, &["session", "list", "--help"]);
    assert!(help.ok().contains("--uid"), "{}", help.stdout);
}

#[test]
fn listings_never_show_refresh_tokens_or_their_hashes() {
    use base64::Engine;
    use sha2::Digest;
    let app = TestApp::spawn();
    let config = crate::common::write_config(app.dir.path());
    let r = app.login_ok("alice");
    let refresh = r.str("refresh_token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(refresh.trim_start_matches("lvrt_"))
        .unwrap();
    let hash: String = sha2::Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for args in [
        vec!["session", "list"],
        vec!["--json", "session", "list"],
        vec!["--json", "session", "list", "--uid", &r.str("uid")],
        vec!["export"],
    ] {
        let out = cli(&config, &args);
        let out = out.ok();
        assert!(!out.is_empty());
        assert!(
            !out.contains(&refresh[5..]),
            "{args:?} shows a refresh token"
        );
        assert!(!out.contains(&hash), "{args:?} shows a refresh-token hash");
    }
}

#[test]
fn an_admin_token_header_that_is_not_visible_ascii_is_a_401_not_a_server_error() {
    use std::io::{Read, Write};
    let app = TestApp::spawn();
    let file = app.dir.path().join("db.admin-token");
    let endpoint: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = endpoint["token"].as_str().unwrap().to_string();
    let send = |authorization: &[u8]| {
        let body = br#"{"after": null, "limit": 10}"#;
        let mut request = format!(
            "POST /admin/v1/user-list HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: ",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(authorization);
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        let mut stream = std::net::TcpStream::connect(app.admin_addr.unwrap()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // 0xFF is legal in a header value (obs-text) but not visible ASCII.
    for value in [
        [b"Bearer ", token.as_bytes(), b"\xff"].concat(),
        b"Bearer \xff".to_vec(),
        b"\xff".to_vec(),
    ] {
        let answer = send(&value);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains(r#""code":"unauthenticated""#), "{answer}");
    }
    let answer = send(format!("Bearer {token}").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Logs alice and bob in twice each and carol once, and returns the sids of bob's two
/// sessions.
fn five_sessions(base: &str) -> (String, String) {
    let sid = |r: &crate::common::Reply| {
        crate::common::jwt_claims(&r.str("access_token"))["sid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    login(base, "alice");
    login(base, "alice");
    let b1 = sid(&login(base, "bob"));
    let b2 = sid(&login(base, "bob"));
    login(base, "carol");
    (b1, b2)
}

#[test]
fn every_session_revoke_form_prints_the_same_with_the_server_running_and_stopped() {
    // The same five logins on two databases: one revoked through the running server's
    // admin API, the other directly with its server stopped.
    let outputs = |stop_first: bool| -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
        let config = dir.path().join("liveuser.toml");
        let (b1, b2) = five_sessions(&server.base);
        let alice = login(&server.base, "alice");
        let alice_uid = alice.str("uid");
        if stop_first {
            assert!(server.terminate().success());
        }
        let commands: Vec<Vec<&str>> = vec![
            vec!["session", "revoke", &b1],
            vec!["session", "revoke", &b1, &b2],
            vec!["--json", "session", "revoke", &b2],
            vec!["session", "revoke", "--uid", &alice_uid],
            vec!["--json", "session", "revoke", "--uid", &alice_uid],
            vec!["session", "revoke", "--all"],
            vec!["--json", "session", "revoke", "--all"],
        ];
        let printed = commands
            .iter()
            .map(|c| cli(&config, c).ok().to_string())
            .collect();
        let via = cli(&config, &["-v", "session", "list"]).stderr;
        let expected = if stop_first {
            "directly"
        } else {
            crate::common::cli_path_to_running_server()
        };
        assert!(via.contains(expected), "{via}");
        if !stop_first {
            // Revocation through the running server takes effect at once.
            let r = post(
                &server.base,
                "/liveuser/User/QueryUser",
                json!({"uids": []}),
                Some(&alice.str("access_token")),
            );
            r.assert_error(401, "unauthenticated");
        }
        printed
    };
    let running = outputs(false);
    assert_eq!(running[0], "revoked 1 session; 0 had already ended\n");
    assert_eq!(running[1], "revoked 1 session; 1 had already ended\n");
    assert_eq!(running[3], "revoked 3 sessions; 0 had already ended\n");
    assert_eq!(running[5], "revoked 1 session; 5 had already ended\n");
    assert_eq!(outputs(true), running);
}

#[test]
fn an_admin_request_with_a_chunked_body_is_answered_like_any_other() {
    use std::io::{Read, Write};
    let app = TestApp::spawn();
    app.login_ok("alice");
    let file = app.dir.path().join("db.admin-token");
    let endpoint: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = endpoint["token"].as_str().unwrap().to_string();
    // A body without Content-Length, in chunks (as a streaming client sends it).
    let send = |path: &str, chunks: &[&[u8]]| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .into_bytes();
        for chunk in chunks {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let mut stream = std::net::TcpStream::connect(app.admin_addr.unwrap()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(&request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = send(
        "/admin/v1/user-list",
        &[br#"{"after": null,"#, br#" "limit": 10}"#],
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""users":[{"uid":"#), "{answer}");

    let answer = send("/admin/v1/export", &[br#"{"sessions":"#, b"false}"]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("liveuser-export"), "{answer}");

    // Bounded like a body with a length: refused past 1 MiB, not read to the end.
    let big = vec![b' '; 256 * 1024];
    let answer = send("/admin/v1/user-list", &[&big, &big, &big, &big, &big]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"invalid_argument""#), "{answer}");
    assert!(answer.contains("too large"), "{answer}");

    let answer = send("/admin/v1/user-list", &[b"{not json"]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"invalid_argument""#), "{answer}");
}

/// One rule for repeated fields on every path (as the public API refuses them): an admin
/// request that gives a field twice is refused naming it, whichever value a parser would
/// have kept, and nothing is done.
#[test]
fn an_admin_request_that_gives_a_field_twice_is_refused_naming_it() {
    let app = TestApp::spawn();
    let alice = app.login_ok("alice");
    let uid = alice.str("uid");
    let file = app.dir.path().join("db.admin-token");
    let endpoint: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = endpoint["token"].as_str().unwrap().to_string();
    let admin = format!("http://{}", app.admin_addr.unwrap());
    let send = |path: &str, body: &str| {
        crate::common::send(
            &crate::common::agent(),
            "POST",
            &format!("{admin}{path}"),
            &[
                ("content-type", "application/json".to_string()),
                ("authorization", format!("Bearer {token}")),
            ],
            body.as_bytes(),
        )
    };
    let import = |user_line: &str| {
        format!(
            "{}\n{user_line}\n{}\n",
            r#"{"kind":"header","format":"liveuser-export","version":2,"exported_at":1,"sessions":false}"#,
            r#"{"kind":"end","users":1,"identities":0,"sessions":0}"#,
        )
    };
    let cases = [
        (
            "/admin/v1/user-put",
            r#"{"uid":"carol","name":"A","name":"B"}"#.to_string(),
            "name",
        ),
        (
            "/admin/v1/user-put",
            r#"{"uid":"carol","u\u0069d":"dave","name":"A"}"#.to_string(),
            "uid",
        ),
        (
            "/admin/v1/user-get",
            format!(r#"{{"uids":["{uid}"],"uids":["carol"]}}"#),
            "uids",
        ),
        (
            "/admin/v1/user-list",
            r#"{"after":null,"limit":10,"limit":20}"#.to_string(),
            "limit",
        ),
        (
            "/admin/v1/session-list",
            format!(r#"{{"uid":"{uid}","uid":null,"after":null,"limit":10}}"#),
            "uid",
        ),
        (
            "/admin/v1/session-revoke",
            format!(r#"{{"sids":[],"uid":"carol","uid":"{uid}","all":false}}"#),
            "uid",
        ),
        (
            "/admin/v1/token-mint",
            format!(r#"{{"uid":"{uid}","ttl_secs":60,"ttl_secs":600}}"#),
            "ttl_secs",
        ),
        (
            "/admin/v1/export",
            r#"{"sessions":false,"sessions":true}"#.to_string(),
            "sessions",
        ),
        (
            "/admin/v1/import?merge=true",
            import(
                r#"{"kind":"user","uid":"carol","name":"A","name":"B","agent":"","avatar":"","update_at":1}"#,
            ),
            "name",
        ),
        (
            "/admin/v1/import?merge=true",
            import(
                r#"{"kind":"user","kind":"user","uid":"carol","name":"A","agent":"","avatar":"","update_at":1}"#,
            ),
            "kind",
        ),
    ];
    for (path, body, field) in &cases {
        let r = send(path, body);
        r.assert_error(400, "invalid_argument");
        assert!(
            r.str("msg").contains(&format!("duplicate field `{field}`")),
            "{path} {body}: {}",
            r.text
        );
    }
    // The import's query too, before anything is read.
    let good =
        import(r#"{"kind":"user","uid":"carol","name":"A","agent":"","avatar":"","update_at":1}"#);
    for query in ["merge=true&merge=false", "merge=true&merge=true"] {
        let r = send(&format!("/admin/v1/import?{query}"), &good);
        r.assert_error(400, "invalid_argument");
        assert_eq!(
            r.str("msg"),
            "bad query: merge must appear only once",
            "{query}"
        );
    }

    // Nothing was written or revoked: carol does not exist, alice's session renews.
    let r = send("/admin/v1/user-get", r#"{"uids":["carol"]}"#);
    assert_eq!(r.body["missing"], json!(["carol"]), "{}", r.text);
    assert_eq!(app.renew(&alice.str("refresh_token")).status, 200);
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    every_read_command_prints_the_same_with_the_server_running_and_stopped,
    write_commands_work_and_fail_alike_with_the_server_running_and_stopped,
    listings_never_show_refresh_tokens_or_their_hashes,
    every_session_revoke_form_prints_the_same_with_the_server_running_and_stopped,
);
