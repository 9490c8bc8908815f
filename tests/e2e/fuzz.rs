//! Arbitrary bytes through the real server: raw garbage on the socket, and well-formed
//! HTTP carrying random methods, paths, headers and bodies. Every request gets an answer
//! (only the start of a request cut short may get silence), nothing gets a 5xx, nothing
//! routed to liveuser gets a non-JSON answer, and the server stays up.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::common::TestApp;

/// Sends `request` on a fresh connection and reads until the server closes it.
/// `half_close` also ends the client's side after the request, which is the end of a
/// request that is not yet complete.
fn exchange(app: &TestApp, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer and close before reading everything (too_large); a reset
    // on write is fine, the answer is what counts.
    let _ = s.write_all(request);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

fn body_of(answer: &[u8]) -> &[u8] {
    match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &answer[i + 4..],
        None => &[],
    }
}

#[test]
fn raw_garbage_on_the_socket_never_gets_a_server_error() {
    let app = TestApp::spawn();
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..2048), |bytes| {
            let answer = exchange(&app, &bytes, true);
            // Silence is the right answer only to the start of a request cut short (the
            // client half-closed); anything the parser rejects or completes gets an
            // answer. So a server that dropped connections fails here, at once.
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let cut_short = matches!(
                httparse::Request::new(&mut headers).parse(&bytes),
                Ok(httparse::Status::Partial)
            );
            match status_of(&answer) {
                Some(status) => prop_assert!(status < 500, "{status} for {bytes:?}"),
                None => prop_assert!(
                    cut_short && answer.is_empty(),
                    "no HTTP answer to {bytes:?}: {:?}",
                    String::from_utf8_lossy(&answer)
                ),
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(app.raw("GET", "/healthz", &[], b"").status, 200, "still up");
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        4 => Just("POST".to_string()),
        1 => Just("GET".to_string()),
        1 => "[A-Z]{1,8}",
    ];
    let path = prop_oneof![
        Just("/liveuser/Wx/Login".to_string()),
        Just("/liveuser/Wx/RenewToken".to_string()),
        Just("/liveuser/User/AddUser".to_string()),
        Just("/liveuser/User/QueryUser".to_string()),
        Just("/healthz".to_string()),
        "/[A-Za-z0-9/%._~-]{0,40}",
    ];
    let content_type = prop_oneof![
        4 => Just("application/json".to_string()),
        1 => Just("application/json; charset=utf-8".to_string()),
        1 => "[ -~]{0,30}",
    ];
    let auth = prop_oneof![
        Just(String::new()),
        "Bearer [A-Za-z0-9._-]{0,120}".prop_map(|s| format!("Authorization: {s}\r\n")),
        "[ -~]{0,60}".prop_map(|s| format!("Authorization: {s}\r\n")),
    ];
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        "[{}\\[\\]\",:a-z0-9 ]{0,200}".prop_map(String::into_bytes),
        Just(br#"{"code":"alice"}"#.to_vec()),
        Just(br#"{"user":{"name":"x"}}"#.to_vec()),
        Just(br#"{"uids":["a","b"]}"#.to_vec()),
    ];
    (method, path, content_type, auth, body, any::<bool>()).prop_map(
        |(method, path, ct, auth, body, chunked)| {
            let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ct}\r\n{auth}")
                .into_bytes();
            if chunked {
                r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                r.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                r.extend_from_slice(&body);
                r.extend_from_slice(b"\r\n0\r\n\r\n");
            } else {
                r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                r.extend_from_slice(&body);
            }
            r
        },
    )
}

#[test]
fn random_http_requests_get_json_answers_and_never_a_server_error() {
    let app = TestApp::spawn();
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request(), |request| {
            let answer = exchange(&app, &request, false);
            let status = status_of(&answer);
            prop_assert!(
                status.is_some(),
                "no HTTP answer to {:?}",
                String::from_utf8_lossy(&request)
            );
            let status = status.unwrap();
            prop_assert!(
                status < 500,
                "{status} for {:?}",
                String::from_utf8_lossy(&request)
            );
            // A request hyper could parse reaches liveuser, which answers JSON.
            if status != 400 || !body_of(&answer).is_empty() {
                let body: serde_json::Value =
                    serde_json::from_slice(body_of(&answer)).map_err(|_| {
                        TestCaseError::fail(format!(
                            "not JSON: {:?}",
                            String::from_utf8_lossy(&answer)
                        ))
                    })?;
                if status >= 400 {
                    prop_assert!(body["code"].is_string() && body["msg"].is_string());
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(app.raw("GET", "/healthz", &[], b"").status, 200, "still up");
}
