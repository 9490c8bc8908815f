//! Running it in production: metrics, HTTPS, the access log, the API document, and a
//! graceful stop under load.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use liveuser::clock::OffsetClock;

use crate::common::{
    Backend, Binary, Reply, TestApp, agent, backend, binary_config, cli, post, send, write_config,
};

fn get(base: &str, path: &str) -> Reply {
    send(&agent(), "GET", &format!("{base}{path}"), &[], b"")
}

/// `name{labels}` → value, from the Prometheus text format.
fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let r = get(&app.base, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"].starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    r.text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_change_as_requests_are_made() {
    let app = TestApp::spawn_wechat(|c| c.token.reuse_grace_secs = 5);
    let before = scrape(&app);
    let r = app.login_ok("ok-metrics");
    app.login("e40029").assert_error(401, "unauthenticated");
    let renewed = app.renew(&r.str("refresh_token"));
    assert_eq!(renewed.status, 200);
    app.advance(10);
    app.renew(&r.str("refresh_token"))
        .assert_error(401, "unauthenticated"); // reuse: the family is revoked
    let after = scrape(&app);

    let delta = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(
        delta(r#"liveuser_http_requests_total{code="ok",method="Login",status="200"}"#),
        1.0
    );
    assert_eq!(
        delta(
            r#"liveuser_http_requests_total{code="unauthenticated",method="Login",status="401"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(r#"liveuser_http_requests_total{code="ok",method="RenewToken",status="200"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"liveuser_http_request_duration_seconds_count{method="RenewToken"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"liveuser_wechat_calls_total{errcode="0",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"liveuser_wechat_calls_total{errcode="40029",outcome="invalid_code"}"#),
        1.0
    );
    assert_eq!(delta("liveuser_refresh_rotations_total"), 1.0);
    assert_eq!(delta("liveuser_refresh_reuse_detected_total"), 1.0);
    assert_eq!(delta("liveuser_users"), 1.0, "a first login adds a user");
    assert_eq!(
        value(&after, "liveuser_sessions_live"),
        0.0,
        "the reused family was revoked"
    );
    assert!(delta("liveuser_storage_flush_duration_seconds_count") >= 1.0);
    // Every flush made at least one writer durable, and every durable write waited for one.
    let (flushes, writers) = (
        delta("liveuser_storage_flush_batch_writers_count"),
        delta("liveuser_storage_flush_batch_writers_sum"),
    );
    assert_eq!(
        flushes,
        delta("liveuser_storage_flush_duration_seconds_count")
    );
    assert!(
        writers >= flushes && writers >= 3.0,
        "{writers} writers in {flushes} flushes"
    );
    assert_eq!(
        delta(r#"liveuser_http_requests_total{code="ok",method="metrics",status="200"}"#),
        1.0,
        "the first scrape is counted in the second"
    );
}

#[test]
fn metrics_can_be_turned_off() {
    let app = TestApp::spawn_with(|c| c.server.metrics = false);
    get(&app.base, "/metrics").assert_error(404, "bad_route");
}

/// A CA and a certificate for `localhost` signed by it, as PEM files in `dir`.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, ca.pem())
}

#[test]
fn https_serves_the_api_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = certificate(certs.path());
    let app = TestApp::spawn_with(|c| {
        c.server.tls_cert = cert.clone();
        c.server.tls_key = key.clone();
    });
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[
            ureq::tls::Certificate::from_pem(ca.as_bytes()).unwrap(),
        ]))
        .build();
    let client = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let base = format!("https://localhost:{}", app.addr.port());
    let login = send(
        &client,
        "POST",
        &format!("{base}/liveuser/Wx/Login"),
        &[("content-type", "application/json".into())],
        br#"{"code":"over-tls"}"#,
    );
    assert_eq!(login.status, 200, "{}", login.text);
    let q = send(
        &client,
        "POST",
        &format!("{base}/liveuser/User/QueryUser"),
        &[
            ("content-type", "application/json".into()),
            (
                "authorization",
                format!("Bearer {}", login.str("access_token")),
            ),
        ],
        json!({"uids": [login.str("uid")]}).to_string().as_bytes(),
    );
    assert_eq!(q.status, 200, "{}", q.text);

    // Without trusting the CA the handshake fails; plain HTTP gets no answer.
    let untrusting = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    assert!(untrusting.get(&format!("{base}/healthz")).call().is_err());
    assert!(
        agent()
            .get(&format!("http://127.0.0.1:{}/healthz", app.addr.port()))
            .call()
            .is_err()
    );
}

#[test]
fn a_bad_certificate_stops_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let mut config = crate::common::test_config(&dir);
    config.server.tls_cert = cert;
    config.server.tls_key = dir.path().join("missing-key.pem");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let clock = std::sync::Arc::new(liveuser::clock::OffsetClock::new());
    let err = match runtime.block_on(liveuser::app::start(&config, clock)) {
        Ok(_) => panic!("started with a bad certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cert.pem"), "{err}");
}

#[test]
fn each_request_is_logged_once_as_json_with_its_request_id_and_uid() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}[log]\nformat = \"json\"\n", binary_config(dir.path()));
    let server = Binary::serve(dir.path(), &config, &[]);
    let login = send(
        &agent(),
        "POST",
        &format!("{}/liveuser/Wx/Login", server.base),
        &[
            ("content-type", "application/json".into()),
            ("x-request-id", "trace-abc-123".into()),
        ],
        br#"{"code":"logged"}"#,
    );
    assert_eq!(login.headers["x-request-id"], "trace-abc-123");
    let health = get(&server.base, "/healthz");
    let generated = health.headers["x-request-id"].clone();
    assert_eq!(generated.len(), 16, "a generated id: {generated}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let log = server.log();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["request_id"].is_string())
            .collect();
        // The lines are written as the requests end: wait for these two.
        let logged = |id: &str| lines.iter().any(|v| v["request_id"] == id);
        if (logged("trace-abc-123") && logged(&generated)) || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let login_lines: Vec<&Value> = lines
        .iter()
        .filter(|v| v["request_id"] == "trace-abc-123")
        .collect();
    assert_eq!(login_lines.len(), 1, "one line per request: {lines:?}");
    let line = login_lines[0];
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/liveuser/Wx/Login");
    assert_eq!(line["status"], 200);
    assert_eq!(line["uid"], login.str("uid"));
    assert!(line["latency_ms"].is_number());
    let log = server.log();
    assert!(!log.contains(&login.str("access_token")));
    assert!(!log.contains(&login.str("refresh_token")));
    assert!(lines.iter().any(|v| v["request_id"] == generated.as_str()));
}

/// Checks `value` against the subset of JSON Schema the document uses.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !types.is_empty() && !types.contains(&actual) {
        return Err(format!("{at}: {actual} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(max), Some(s)) = (schema["maxLength"].as_u64(), value.as_str())
        && s.chars().count() as u64 > max
    {
        return Err(format!("{at}: longer than {max}"));
    }
    if let (Some(min), Some(s)) = (schema["minLength"].as_u64(), value.as_str())
        && (s.chars().count() as u64) < min
    {
        return Err(format!("{at}: shorter than {min}"));
    }
    // JSON Schema patterns are unanchored ECMA-262 regexes; the document's are written
    // in the subset both dialects read alike.
    if let (Some(pattern), Some(s)) = (schema["pattern"].as_str(), value.as_str())
        && !regex::Regex::new(pattern)
            .map_err(|e| format!("{at}: pattern {pattern}: {e}"))?
            .is_match(s)
    {
        return Err(format!("{at}: {s:?} does not match {pattern}"));
    }
    if let Value::Object(map) = value {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !map.contains_key(name) {
                return Err(format!("{at}: {name} is missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, v) in map {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => conforms(doc, s, v, &format!("{at}.{name}"))?,
                None if schema["additionalProperties"] == false || properties.is_some() => {
                    return Err(format!("{at}: {name} is not documented"));
                }
                None => {}
            }
        }
    }
    if let Value::Array(items) = value {
        for (i, item) in items.iter().enumerate() {
            conforms(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_openapi_document_matches_the_real_routes() {
    let app = TestApp::spawn();
    let r = get(&app.base, "/liveuser/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut served: Vec<&str> = [
        "/liveuser/Wx/Login",
        "/liveuser/Wx/RenewToken",
        "/liveuser/User/AddUser",
        "/liveuser/User/QueryUser",
        "/healthz",
        "/metrics",
        "/liveuser/openapi.json",
        "/liveuser/Auth/Check",
        "/.well-known/jwks.json",
    ]
    .into_iter()
    .collect();
    served.sort_unstable();
    assert_eq!(
        documented, served,
        "every route is documented, and only those"
    );

    // A grant's refresh token leads to RenewToken, named by its operationId.
    let renew_id = &paths["/liveuser/Wx/RenewToken"]["post"]["operationId"];
    assert_eq!(renew_id, "RenewToken");
    for method in ["/liveuser/Wx/Login", "/liveuser/Wx/RenewToken"] {
        let link = &paths[method]["post"]["responses"]["200"]["links"]["RenewToken"];
        assert_eq!(&link["operationId"], renew_id, "{method}: {link}");
        assert_eq!(
            link["requestBody"]["refresh_token"],
            "$response.body#/refresh_token"
        );
    }

    let login = app.login_ok("openapi");
    let token = login.str("access_token");
    for (path, item) in paths {
        if path == "/liveuser/Auth/Check" {
            // Any method: forward_auth.rs checks each against its documented answers.
            continue;
        }
        let (method, op) = item.as_object().unwrap().iter().next().unwrap();
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        let bearer = secured.then_some(token.as_str());
        let reply = if method == "post" {
            let media = &op["requestBody"]["content"]["application/json"];
            let mut body = media["example"].clone();
            match path.as_str() {
                "/liveuser/Wx/RenewToken" => {
                    body = json!({"refresh_token": login.str("refresh_token")});
                }
                "/liveuser/User/QueryUser" => body = json!({"uids": [login.str("uid")]}),
                _ => {}
            }
            conforms(&doc, &media["schema"], &body, "request").unwrap();
            let reply = app.post(path, &body, bearer);
            // A body that is not JSON: a documented error status with the error body.
            let bad = app.raw(
                "POST",
                path,
                &[("content-type", "application/json".into())],
                b"{",
            );
            assert!(
                op["responses"][bad.status.to_string()].is_object(),
                "{path}: {} is not documented",
                bad.status
            );
            conforms(
                &doc,
                &json!({"$ref": "#/components/schemas/Error"}),
                &bad.body,
                path,
            )
            .unwrap();
            app.raw("GET", path, &[], b"")
                .assert_error(405, "bad_route");
            reply
        } else {
            app.raw("POST", path, &[], b"")
                .assert_error(405, "bad_route");
            get(&app.base, path)
        };
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let content = &op["responses"]["200"]["content"];
        if let Some(schema) = content.get("application/json").map(|c| &c["schema"]) {
            conforms(&doc, schema, &reply.body, path)
                .unwrap_or_else(|e| panic!("{e} in {}", reply.text));
        }
    }
}

/// How one request fared while the server was being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A whole answer with this status.
    Answered(u16),
    /// The connection was refused: the server no longer listens.
    Refused,
    /// The connection was closed before any byte of an answer.
    Unanswered,
    /// Part of an answer, then the connection ended: must never happen.
    Partial,
}

/// One AddUser on a fresh connection, read byte by byte to tell the outcomes apart.
fn add_user_raw(addr: SocketAddr, token: &str, name: &str) -> Outcome {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Outcome::Refused;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let body = json!({"user": {"name": name}}).to_string();
    let request = format!(
        "POST /liveuser/User/AddUser HTTP/1.1\r\nHost: liveuser\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return Outcome::Unanswered;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    if answer.is_empty() {
        return Outcome::Unanswered;
    }
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Partial;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(usize::MAX);
    if body.len() != length {
        return Outcome::Partial;
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Outcome::Answered(status)
}

#[test]
fn sigterm_under_load_answers_or_refuses_every_request_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let mut server = Binary::serve(dir.path(), &config, &[]);
    let users: Vec<(String, String)> = (0..6)
        .map(|i| {
            let r = send(
                &agent(),
                "POST",
                &format!("{}/liveuser/Wx/Login", server.base),
                &[("content-type", "application/json".into())],
                json!({"code": format!("load-{i}")}).to_string().as_bytes(),
            );
            (r.str("uid"), r.str("access_token"))
        })
        .collect();

    let acked: Vec<Mutex<u64>> = users.iter().map(|_| Mutex::new(0)).collect();
    let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let stopped = AtomicBool::new(false);
    let addr = server.addr;
    let status = std::thread::scope(|s| {
        for (i, (_, token)) in users.iter().enumerate() {
            let (acked, outcomes, stopped) = (&acked[i], &outcomes, &stopped);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                for k in 1.. {
                    let outcome = add_user_raw(addr, token, &format!("n{k}"));
                    outcomes.lock().unwrap().push(outcome);
                    match outcome {
                        Outcome::Answered(200) => *acked.lock().unwrap() = k,
                        Outcome::Refused => break,
                        _ => {}
                    }
                    if stopped.load(Ordering::Relaxed) && Instant::now() > deadline {
                        break;
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(800));
        let status = server.terminate();
        stopped.store(true, Ordering::Relaxed);
        status
    });
    assert!(status.success(), "exit status {status:?}");
    let outcomes = outcomes.into_inner().unwrap();
    let answered = outcomes
        .iter()
        .filter(|o| **o == Outcome::Answered(200))
        .count();
    assert!(
        answered > 20,
        "the load was real: {answered} answered writes"
    );
    for outcome in &outcomes {
        assert!(
            matches!(
                outcome,
                Outcome::Answered(200) | Outcome::Refused | Outcome::Unanswered
            ),
            "a request ended badly: {outcome:?}"
        );
    }
    assert!(server.log().contains("storage flushed"));

    let server = Binary::serve(dir.path(), &config, &[]);
    let uids: Vec<&str> = users.iter().map(|u| u.0.as_str()).collect();
    let r = send(
        &agent(),
        "POST",
        &format!("{}/liveuser/User/QueryUser", server.base),
        &[
            ("content-type", "application/json".into()),
            ("authorization", format!("Bearer {}", users[0].1)),
        ],
        json!({ "uids": uids }).to_string().as_bytes(),
    );
    for (i, user) in r.body["users"].as_array().unwrap().iter().enumerate() {
        let stored: u64 = user["name"].as_str().unwrap()[1..].parse().unwrap_or(0);
        let acked = *acked[i].lock().unwrap();
        assert!(
            stored >= acked,
            "user {i}: acknowledged n{acked}, found n{stored}"
        );
    }
}

#[test]
fn a_stop_while_the_users_are_being_counted_lets_the_next_start_open_the_database() {
    // sled only: its lock is what a second open finds held. A start counts the users on
    // a blocking thread; with this many, the count outlasts a stop made at once.
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("users.jsonl");
    let mut lines = vec![
        json!({"kind": "header", "format": "liveuser-export", "version": 2,
               "exported_at": 1, "sessions": false})
        .to_string(),
    ];
    const USERS: u64 = 30_000;
    for i in 0..USERS {
        lines.push(
            json!({"kind": "user", "uid": format!("u{i:06}"), "name": "", "agent": "",
                   "avatar": "", "update_at": 1})
            .to_string(),
        );
    }
    lines.push(json!({"kind": "end", "users": USERS, "identities": 0, "sessions": 0}).to_string());
    std::fs::write(&export, lines.join("\n") + "\n").unwrap();
    cli(
        &write_config(dir.path()),
        &["import", export.to_str().unwrap()],
    )
    .ok();

    let mut app = TestApp::spawn_in(dir, std::sync::Arc::new(OffsetClock::new()));
    for _ in 0..3 {
        app.restart();
    }
    assert_eq!(get(&app.base, "/healthz").status, 200);
}

#[test]
fn the_executable_says_on_stdout_which_addresses_it_bound_once_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let public = server.addr;
    assert_ne!(public.port(), 0, "the port picked, not the one asked for");
    let expected = match server.admin_addr {
        Some(admin) => {
            assert_eq!(backend(), Backend::Sled, "an admin API on PostgreSQL");
            assert!(![0, public.port()].contains(&admin.port()), "{admin}");
            format!("listening public=http://{public} admin=http://{admin}")
        }
        None => {
            assert_eq!(backend(), Backend::Postgres, "no admin API on sled");
            format!("listening public=http://{public}")
        }
    };
    assert_eq!(server.ready, expected);
    // Said once it serves: the first request is answered, with no wait before it.
    assert_eq!(get(&server.base, "/healthz").status, 200);
    if let Some(admin) = server.admin_addr {
        let endpoint = std::fs::read_to_string(dir.path().join("db.admin-token")).unwrap();
        let endpoint: Value = serde_json::from_str(&endpoint).unwrap();
        let r = post(
            &format!("http://{admin}"),
            "/admin/v1/user-list",
            json!({"after": null, "limit": 10}),
            endpoint["token"].as_str(),
        );
        assert_eq!(r.status, 200, "the admin API answers there: {}", r.text);
    }
}

#[test]
fn with_a_certificate_the_executable_says_its_public_address_is_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path());
    let config = binary_config(dir.path()).replace(
        "[storage]",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n[storage]",
            cert.display(),
            key.display()
        ),
    );
    let server = Binary::serve(dir.path(), &config, &[]);
    let public = format!("public=https://{}", server.addr);
    assert_eq!(
        server.ready.split(' ').nth(1),
        Some(public.as_str()),
        "{}",
        server.ready
    );
}

crate::on_postgres!(the_executable_says_on_stdout_which_addresses_it_bound_once_it_serves);
