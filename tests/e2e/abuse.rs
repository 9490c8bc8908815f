//! Abuse limits: per-address rate limits on Login and RenewToken, and slow or idle
//! clients that must not exhaust the server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::common::{Reply, TestApp};

fn login_from(app: &TestApp, code: &str, forwarded_for: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(xff) = forwarded_for {
        headers.push(("x-forwarded-for", xff.to_string()));
    }
    let body = json!({ "code": code }).to_string();
    app.raw("POST", "/liveuser/Wx/Login", &headers, body.as_bytes())
}

fn renew_from(app: &TestApp, token: &str, forwarded_for: &str) -> Reply {
    let headers = vec![
        ("content-type", "application/json".to_string()),
        ("x-forwarded-for", forwarded_for.to_string()),
    ];
    let body = json!({ "refresh_token": token }).to_string();
    app.raw("POST", "/liveuser/Wx/RenewToken", &headers, body.as_bytes())
}

#[track_caller]
fn assert_limited(r: &Reply) -> u64 {
    r.assert_error(429, "resource_exhausted");
    let secs: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers));
    assert!(secs >= 1);
    secs
}

#[test]
fn login_and_renew_are_limited_per_address_with_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.limits.login_per_min = 3;
        c.limits.renew_per_min = 2;
    });
    let first = app.login_ok("alice");
    app.login_ok("bob");
    app.login_ok("carol");
    let refused = login_from(&app, "dave", None);
    let wait = assert_limited(&refused);
    assert!(wait <= 20, "one Login comes back every 20 s, not {wait}");

    // RenewToken has its own bucket, and other methods none.
    let r1 = app.renew(&first.str("refresh_token"));
    assert_eq!(r1.status, 200, "{}", r1.text);
    let r2 = app.renew(&r1.str("refresh_token"));
    assert_eq!(r2.status, 200, "{}", r2.text);
    assert_limited(&app.renew(&r2.str("refresh_token")));
    for _ in 0..10 {
        assert_eq!(app.query(&first.str("access_token"), &[]).status, 200);
    }
}

#[test]
fn zero_turns_the_limits_off() {
    let app = TestApp::spawn_with(|c| {
        c.limits.login_per_min = 0;
        c.limits.renew_per_min = 0;
    });
    let mut token = app.login_ok("alice").str("refresh_token");
    for i in 0..150 {
        let r = app.renew(&token);
        assert_eq!(r.status, 200, "renewal {i}: {}", r.text);
        token = r.str("refresh_token");
    }
    for i in 0..80 {
        app.login_ok(&format!("user-{i}"));
    }
}

#[test]
fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    // Not trusted: the header is ignored; every request is the peer, 127.0.0.1.
    let app = TestApp::spawn_with(|c| c.limits.login_per_min = 2);
    assert_eq!(login_from(&app, "a", Some("203.0.113.1")).status, 200);
    assert_eq!(login_from(&app, "b", Some("203.0.113.2")).status, 200);
    assert_limited(&login_from(&app, "c", Some("203.0.113.3")));

    // Trusted: the rightmost address the proxy added is the client, whatever the
    // client wrote to its left.
    let app = TestApp::spawn_with(|c| {
        c.limits.login_per_min = 2;
        c.limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    assert_eq!(login_from(&app, "a", Some("203.0.113.1")).status, 200);
    assert_eq!(login_from(&app, "b", Some("203.0.113.1")).status, 200);
    assert_limited(&login_from(&app, "c", Some("203.0.113.1")));
    assert_limited(&login_from(&app, "c", Some("198.51.100.1, 203.0.113.1")));
    assert_eq!(login_from(&app, "d", Some("203.0.113.2")).status, 200);
    assert_eq!(
        login_from(&app, "e", Some("203.0.113.1, 203.0.113.3")).status,
        200,
        "a spoofed left entry is not who is counted"
    );
}

#[test]
fn a_flood_from_many_addresses_does_not_free_a_limited_one() {
    let app = TestApp::spawn_with(|c| {
        // Two calls a minute: the drained bucket must not refill (30 s) while the flood
        // below runs, however slow the machine, and the flood's buckets (one call each)
        // must stay fuller than it.
        c.limits.renew_per_min = 2;
        c.limits.max_tracked_addresses = 64;
        c.limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    let attacker = "198.51.100.66";
    let mut answered = 0;
    while renew_from(&app, "lvrt_x", attacker).status != 429 {
        answered += 1;
        assert!(answered <= 2, "the limit never applied");
    }
    // 500 distinct addresses, eight times the table's capacity.
    for i in 0..500u32 {
        let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        let r = renew_from(&app, "lvrt_x", &addr);
        r.assert_error(401, "unauthenticated");
    }
    assert_limited(&renew_from(&app, "lvrt_x", attacker));
}

/// Reads until the server closes the connection (or 20 s pass); what it sent.
fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(format!(
                    "still open; got {:?}",
                    String::from_utf8_lossy(&out)
                ));
            }
            Err(_) => return Ok(out), // reset: closed too
        }
    }
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_cannot_exhaust_the_connections() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout_ms = 300;
        c.server.body_read_timeout_ms = 300;
        c.server.max_connections = 4;
    });
    // Four clients take every connection slot and never finish their headers.
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(app.addr).unwrap();
            s.write_all(b"POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // A real client still gets through: the slow ones are cut at the header timeout.
    let r = app.login("alice");
    assert_eq!(r.status, 200, "{}", r.text);
    for s in &mut slow {
        read_until_closed(s).expect("a slow client is disconnected");
    }

    // A body trickled too slowly is refused with a JSON error, and the connection closed.
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.write_all(
        b"POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"code\":",
    )
    .unwrap();
    let answer = String::from_utf8(read_until_closed(&mut s).expect("closed")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"malformed""#), "{answer}");

    // An idle keep-alive connection is closed after the same timeout.
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8(read_until_closed(&mut s).expect("closed")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"status":"ok"}"#), "{answer}");
}

#[test]
fn an_answer_given_without_reading_the_body_closes_the_connection_and_says_so() {
    let app = TestApp::spawn();
    // Unknown path: answered from the head alone, the body never read.
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.write_all(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let answer = String::from_utf8(read_until_closed(&mut s).expect("closed")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // A request whose body was read keeps its connection for the next one.
    let mut s = TcpStream::connect(app.addr).unwrap();
    let login = br#"{"code":"alice"}"#;
    let request = format!(
        "POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        login.len()
    );
    for _ in 0..2 {
        s.write_all(request.as_bytes()).unwrap();
        s.write_all(login).unwrap();
    }
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answers = String::from_utf8(read_until_closed(&mut s).expect("closed")).unwrap();
    let answers: Vec<String> = answers
        .split("HTTP/1.1 ")
        .skip(1)
        .map(str::to_ascii_lowercase)
        .collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(answers.iter().all(|a| a.starts_with("200")), "{answers:?}");
    assert!(
        !answers[0].contains("connection: close") && !answers[1].contains("connection: close"),
        "{answers:?}"
    );
}

/// A connection to the server from the local address `from` (every 127.x.y.z is
/// loopback, so a test has as many client addresses as it likes).
fn connect_from(app: &TestApp, from: [u8; 4]) -> TcpStream {
    let stream = app.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        socket.connect(app.addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Whether the server closes `stream` within `wait` (it sends nothing first).
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Sends `GET /healthz` on `stream` and reads the answer (within `wait`).
fn healthz_on(stream: &mut TcpStream, wait: Duration) -> Result<String, String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains(r#"{"status":"ok"}"#) {
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("closed; got {:?}", String::from_utf8_lossy(&out))),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e}; got {:?}", String::from_utf8_lossy(&out))),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn one_address_holding_idle_connections_cannot_lock_out_another() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_connections = 8;
        c.server.max_connections_per_address = 4;
        // Idle sockets are not cut by time here: only the per-address cap protects.
        c.server.header_read_timeout_ms = 60_000;
        c.server.first_request_timeout_ms = 60_000;
    });
    // One address opens more connections than the whole server takes, and sends nothing.
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| connect_from(&app, [127, 0, 0, 1]))
        .collect();
    // Another address is answered at once.
    let started = std::time::Instant::now();
    let mut other = connect_from(&app, [127, 0, 0, 2]);
    let answer = healthz_on(&mut other, Duration::from_secs(1)).expect("another address is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Those over its cap are closed at once; the first four stay open.
    let closed: Vec<bool> = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(500)))
        .collect();
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        16,
        "closed connections: {closed:?}"
    );

    // The connections the first address kept still work.
    let kept = closed.iter().position(|c| !c).unwrap();
    let answer = healthz_on(&mut idle[kept], Duration::from_secs(1)).expect("a kept connection");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_trusted_proxy_is_exempt_from_the_per_address_cap() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_connections_per_address = 2;
        c.server.header_read_timeout_ms = 60_000;
        c.server.first_request_timeout_ms = 60_000;
        c.limits.trusted_proxies = vec!["127.0.0.3".parse().unwrap()];
    });
    // A proxy carries many clients: every one of its connections is kept and served.
    let mut proxied: Vec<TcpStream> = (0..6).map(|_| connect_from(&app, [127, 0, 0, 3])).collect();
    for stream in &mut proxied {
        assert!(!closed_within(stream, Duration::from_millis(200)));
    }
    for stream in &mut proxied {
        let answer = healthz_on(stream, Duration::from_secs(1)).expect("a proxied connection");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Another address in the same run is still capped.
    let mut direct: Vec<TcpStream> = (0..4).map(|_| connect_from(&app, [127, 0, 0, 4])).collect();
    let closed = direct
        .iter_mut()
        .filter_map(|s| closed_within(s, Duration::from_millis(500)).then_some(()))
        .count();
    assert_eq!(closed, 2);
}

#[test]
fn a_connection_that_sends_no_first_request_is_closed_before_the_keep_alive_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout_ms = 10_000;
        c.server.first_request_timeout_ms = 300;
    });
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(app.addr).unwrap();
    let mut partial = TcpStream::connect(app.addr).unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut served = TcpStream::connect(app.addr).unwrap();
    healthz_on(&mut served, Duration::from_secs(2)).expect("a first request is answered");

    read_until_closed(&mut silent).expect("a silent connection is closed");
    read_until_closed(&mut partial).expect("an unfinished first request is closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, not at the first-request deadline"
    );
    // A connection that made its request is kept alive past that deadline.
    std::thread::sleep(Duration::from_millis(600));
    let answer = healthz_on(&mut served, Duration::from_secs(2)).expect("still open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// One pipelined request whose answer is large (the OpenAPI document, 12 KB).
const BIG_ANSWER: &[u8] = b"GET /liveuser/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";

/// A connection from `from` whose receive buffer is `recv_buffer` bytes: the kernel
/// does not grow it, so answers left unread back up to the server quickly.
fn connect_with_small_window(app: &TestApp, from: [u8; 4], recv_buffer: u32) -> TcpStream {
    let stream = app.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(recv_buffer).unwrap();
        socket.bind((from, 0).into()).unwrap();
        socket.connect(app.addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Sends `count` pipelined requests for a large answer, reading nothing, until they
/// are all sent or the server has taken none for 300 ms (it reads no further request
/// while an answer waits).
fn pipeline_without_reading(stream: &mut TcpStream, count: usize) {
    let requests = BIG_ANSWER.repeat(count);
    stream.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let mut idle_since = std::time::Instant::now();
    while sent < requests.len() && idle_since.elapsed() < Duration::from_millis(300) {
        match stream.write(&requests[sent..]) {
            Ok(n) => {
                sent += n;
                idle_since = std::time::Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the server closed the connection early: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
}

#[test]
fn a_client_that_pipelines_requests_and_never_reads_is_disconnected_within_the_write_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.server.write_timeout_ms = 2_000;
        c.server.max_connections_per_address = 2;
        // Only the write timeout can cut these connections.
        c.server.header_read_timeout_ms = 60_000;
        c.server.first_request_timeout_ms = 60_000;
    });
    // Two connections, all this address may have, ask for far more than the socket
    // buffers on both sides hold (2000 answers of 12 KB), and read none of it.
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| connect_with_small_window(&app, [127, 0, 0, 6], 4096))
        .collect();
    for stream in &mut stalled {
        pipeline_without_reading(stream, 2000);
    }
    let started = std::time::Instant::now();
    // They hold the address's places …
    let mut over = connect_from(&app, [127, 0, 0, 6]);
    assert!(
        closed_within(&mut over, Duration::from_millis(300)),
        "the address is at its cap"
    );
    // … until the write timeout closes them: then the address is served again.
    loop {
        let mut fresh = connect_from(&app, [127, 0, 0, 6]);
        if healthz_on(&mut fresh, Duration::from_secs(1)).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the stalled connections were not closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_slow_reader_that_keeps_reading_gets_every_answer() {
    let app = TestApp::spawn_with(|c| c.server.write_timeout_ms = 1_500);
    // 600 answers of 12 KB: more than the server's send buffer (at most 4 MiB) and this
    // small receive window together hold, so the server's writes wait on the reader.
    let count = 600;
    let mut stream = connect_with_small_window(&app, [127, 0, 0, 7], 65536);
    let mut writer = stream.try_clone().unwrap();
    let requests = std::thread::spawn(move || writer.write_all(&BIG_ANSWER.repeat(count)));

    // Reads half a megabyte, then pauses; the pauses alone outlast the write timeout
    // several times over, but no write waits that long.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let status = b"HTTP/1.1 200";
    // The end of the last burst, where a status line may have been cut in two.
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut answers = 0;
    while answers < count {
        let mut burst = std::mem::take(&mut tail);
        while burst.len() < 512 * 1024 && answers + count_in(&burst, status) < count {
            let n = stream.read(&mut buf).expect("the connection stays open");
            assert!(n > 0, "closed after {answers} answers");
            burst.extend_from_slice(&buf[..n]);
        }
        // Too short to hold a whole status line, so counted once.
        let kept = burst.len().min(status.len() - 1);
        answers += count_in(&burst, status);
        tail = burst[burst.len() - kept..].to_vec();
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "read too fast to test anything: {:?}",
        started.elapsed()
    );
    requests.join().unwrap().unwrap();
}

fn count_in(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).filter(|w| *w == needle).count()
}
