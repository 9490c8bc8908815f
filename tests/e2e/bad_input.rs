//! Bad input of every kind gets its JSON error, never a 5xx, a panic or a hang.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::common::TestApp;

const JSON: (&str, &str) = ("content-type", "application/json");

fn json_header() -> Vec<(&'static str, String)> {
    vec![(JSON.0, JSON.1.to_string())]
}

#[test]
fn non_json_bodies_are_malformed() {
    let app = TestApp::spawn();
    for body in [
        &b"code=alice"[..],
        b"",
        b"{",
        b"{\"code\": \"a\"",
        b"\xff\xfe",
        b"{\"code\": \"\xc3\x28\"}",
    ] {
        let r = app.raw("POST", "/liveuser/Wx/Login", &json_header(), body);
        r.assert_error(400, "malformed");
    }
}

#[test]
fn json_that_is_not_an_object_or_has_wrong_types_is_invalid_argument() {
    let app = TestApp::spawn();
    let cases = [
        ("/liveuser/Wx/Login", json!([1, 2]), ""),
        ("/liveuser/Wx/Login", json!("code"), ""),
        ("/liveuser/Wx/Login", json!({"code": 42}), "code"),
        ("/liveuser/Wx/Login", json!({"code": {"x": 1}}), "code"),
        ("/liveuser/Wx/Login", json!({"cod": "alice"}), "code"),
        (
            "/liveuser/Wx/RenewToken",
            json!({"refresh_token": true}),
            "refresh_token",
        ),
        ("/liveuser/Wx/RenewToken", json!({}), "refresh_token"),
    ];
    for (path, body, field) in cases {
        let r = app.post(path, &body, None);
        r.assert_error(400, "invalid_argument");
        assert!(r.str("msg").contains(field), "{body}: {}", r.text);
    }
}

#[test]
fn deep_nesting_is_refused_without_a_crash() {
    let app = TestApp::spawn();
    let deep = format!("{{\"code\": {}1{}}}", "[".repeat(5000), "]".repeat(5000));
    let r = app.raw(
        "POST",
        "/liveuser/Wx/Login",
        &json_header(),
        deep.as_bytes(),
    );
    r.assert_error(400, "malformed");
    let shallow = format!("{{\"code\": {}1{}}}", "[".repeat(50), "]".repeat(50));
    let r = app.raw(
        "POST",
        "/liveuser/Wx/Login",
        &json_header(),
        shallow.as_bytes(),
    );
    r.assert_error(400, "invalid_argument");
    assert_eq!(
        app.raw("GET", "/healthz", &[], b"").status,
        200,
        "still serving"
    );
}

#[test]
fn a_wrong_or_missing_content_type_is_bad_route_415() {
    let app = TestApp::spawn();
    let body = br#"{"code": "alice"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let headers: Vec<(&str, String)> = ct
            .map(|c| ("content-type", c.to_string()))
            .into_iter()
            .collect();
        let r = app.raw("POST", "/liveuser/Wx/Login", &headers, body);
        r.assert_error(415, "bad_route");
    }
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;charset=UTF-8",
    ] {
        let r = app.raw(
            "POST",
            "/liveuser/Wx/Login",
            &[("content-type", ct.to_string())],
            body,
        );
        assert_eq!(r.status, 200, "{ct}: {}", r.text);
    }
}

#[test]
fn a_wrong_method_is_bad_route_405() {
    let app = TestApp::spawn();
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let r = app.raw(method, "/liveuser/Wx/Login", &json_header(), b"");
        r.assert_error(405, "bad_route");
        assert_eq!(r.headers.get("allow").map(String::as_str), Some("POST"));
    }
}

#[test]
fn a_wrong_method_on_a_get_route_names_get_in_the_allow_header() {
    let app = TestApp::spawn();
    for (method, path) in [
        ("POST", "/healthz"),
        ("POST", "/metrics"),
        ("POST", "/liveuser/openapi.json"),
        ("PUT", "/healthz"),
        ("DELETE", "/metrics"),
    ] {
        let r = app.raw(method, path, &json_header(), b"{}");
        r.assert_error(405, "bad_route");
        assert_eq!(
            r.headers.get("allow").map(String::as_str),
            Some("GET"),
            "{method} {path}"
        );
        assert!(
            r.body["msg"].as_str().unwrap().contains("use GET"),
            "{}",
            r.text
        );
    }
}

#[test]
fn an_unknown_path_is_bad_route_404() {
    let app = TestApp::spawn();
    for path in [
        "/",
        "/liveuser",
        "/liveuser/Wx",
        "/liveuser/Wx/Logout",
        "/liveuser/wx/login",
        "/liveuser/Wx/Login/extra",
        "/liveuser/Wx/Login/",
        "/liveuser/User/QueryUser/",
        "/metrics2",
    ] {
        let r = app.raw("POST", path, &json_header(), b"{}");
        r.assert_error(404, "bad_route");
    }
    for path in ["/healthz/", "/metrics/", "/liveuser/openapi.json/"] {
        app.raw("GET", path, &[], b"")
            .assert_error(404, "bad_route");
    }
}

#[test]
fn a_body_over_the_limit_is_too_large() {
    let app = TestApp::spawn_with(|c| c.server.body_limit_bytes = 4096);
    let big = format!("{{\"code\": \"{}\"}}", "a".repeat(5000));
    let r = app.raw("POST", "/liveuser/Wx/Login", &json_header(), big.as_bytes());
    r.assert_error(413, "too_large");
    // Just under the limit is read (and then refused for the code's own length limit).
    let fits = format!("{{\"code\": \"{}\"}}", "a".repeat(4000));
    let r = app.raw(
        "POST",
        "/liveuser/Wx/Login",
        &json_header(),
        fits.as_bytes(),
    );
    r.assert_error(400, "invalid_argument");
}

#[test]
fn a_chunked_body_over_the_limit_is_too_large() {
    let app = TestApp::spawn_with(|c| c.server.body_limit_bytes = 4096);
    let mut stream = TcpStream::connect(app.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = "a".repeat(1000);
    for _ in 0..5 {
        write!(stream, "{:x}\r\n{chunk}\r\n", chunk.len()).unwrap();
    }
    let _ = write!(stream, "0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
}

#[test]
fn a_large_content_length_is_refused_before_reading() {
    let app = TestApp::spawn();
    let mut stream = TcpStream::connect(app.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{{"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn no_malformed_request_produces_a_server_error() {
    let app = TestApp::spawn();
    let token = app.login_ok("alice").str("access_token");
    let paths = [
        "/liveuser/Wx/Login",
        "/liveuser/Wx/RenewToken",
        "/liveuser/User/AddUser",
        "/liveuser/User/QueryUser",
    ];
    let bodies: Vec<Vec<u8>> = vec![
        b"null".to_vec(),
        b"{}".to_vec(),
        b"{\"user\": null, \"uids\": null, \"code\": null, \"refresh_token\": null}".to_vec(),
        b"{\"user\": {\"uid\": null, \"name\": null}}".to_vec(),
        b"{\"uids\": [null]}".to_vec(),
        b"1e999999".to_vec(),
        b"\"\\ud800\"".to_vec(),
        vec![0u8; 100],
        "{\"code\": \"\u{202e}\u{0}\"}".as_bytes().to_vec(),
    ];
    for path in paths {
        for body in &bodies {
            let mut headers = json_header();
            headers.push(("authorization", format!("Bearer {token}")));
            let r = app.raw("POST", path, &headers, body);
            assert!(
                r.status < 500,
                "{path} {:?}: {}",
                String::from_utf8_lossy(body),
                r.text
            );
            assert!(r.body.is_object(), "non-JSON answer: {}", r.text);
        }
    }
}

#[test]
fn healthz_answers_ok() {
    let app = TestApp::spawn();
    let r = app.raw("GET", "/healthz", &[], b"");
    assert_eq!((r.status, r.body.clone()), (200, json!({"status": "ok"})));
}

#[test]
fn header_values_that_are_not_visible_ascii_get_json_errors() {
    let app = TestApp::spawn();
    let token = app.login_ok("opaque").str("access_token");
    let send = |headers: &str| {
        let body = r#"{"uids": []}"#;
        let mut stream = TcpStream::connect(app.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = format!(
            "POST /liveuser/User/QueryUser HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(headers.as_bytes());
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body.as_bytes());
        // Latin-1 bytes inside header values are legal HTTP (obs-text) but not UTF-8.
        let request: Vec<u8> = request
            .iter()
            .map(|&b| if b == b'~' { 0xff } else { b })
            .collect();
        stream.write_all(&request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = send(&format!(
        "Content-Type: application/json~\r\nAuthorization: Bearer {token}\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains(r#""code":"bad_route""#), "{answer}");
    let answer = send(&format!(
        "Content-Type: application/json\r\nAuthorization: Bearer {token}~\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains(r#""code":"unauthenticated""#), "{answer}");
    let answer = send(&format!(
        "Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The README's bound on nesting holds for the whole body: the one decoder reads every
/// value, unknown fields included, under serde_json's recursion limit (128 levels, the
/// body counting as one), so a field liveuser ignores cannot carry deeper JSON past it.
/// 30,000 levels also shows the refusal comes before any deep recursion.
#[test]
fn nesting_128_levels_deep_is_malformed_even_inside_an_unknown_field() {
    let app = TestApp::spawn();
    let login = app.login_ok("alice");
    let token = login.str("access_token");
    let bearer = |h: &mut Vec<(&'static str, String)>| {
        h.push(("authorization", format!("Bearer {token}")));
    };
    let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    // (path, body with the nested value at X, how deep X already is)
    let cases = [
        ("/liveuser/Wx/Login", r#"{"code":"alice","x":X}"#, 1),
        (
            "/liveuser/Wx/RenewToken",
            r#"{"refresh_token":"lvrt_x","x":X}"#,
            1,
        ),
        ("/liveuser/User/QueryUser", r#"{"uids":["u"],"x":X}"#, 1),
        (
            "/liveuser/User/AddUser",
            r#"{"user":{"name":"A"},"x":X}"#,
            1,
        ),
        (
            "/liveuser/User/AddUser",
            r#"{"user":{"name":"A","x":X}}"#,
            2,
        ),
    ];
    for (path, template, outer) in cases {
        let mut headers = json_header();
        bearer(&mut headers);
        for levels in [30_000, 128 - outer] {
            let body = template.replace('X', &nested(levels));
            let r = app.raw("POST", path, &headers, body.as_bytes());
            assert_eq!(
                (r.status, r.code()),
                (400, "malformed"),
                "{path}, {} levels in all: {}",
                outer + levels,
                r.text
            );
        }
        // One level less is still JSON liveuser reads (and the unknown field is ignored).
        let body = template.replace('X', &nested(127 - outer));
        let r = app.raw("POST", path, &headers, body.as_bytes());
        assert_ne!(r.code(), "malformed", "{path}: {}", r.text);
    }
}

#[test]
fn a_field_given_twice_is_invalid_argument_naming_it_on_every_path() {
    let app = TestApp::spawn();
    let login = app.login_ok("alice");
    let token = login.str("access_token");
    let mut headers = json_header();
    headers.push(("authorization", format!("Bearer {token}")));
    // Some second values would also be refused for their own reason (a wrong type): the
    // repeat is what is reported, whichever of the two a parser would have kept. A key
    // spelled with an escape is the same key once read.
    let cases = [
        (
            "/liveuser/User/QueryUser",
            r#"{"uids":["a"],"uids":["b"]}"#,
            "uids",
        ),
        (
            "/liveuser/User/QueryUser",
            r#"{"uids":["a"],"uids":7}"#,
            "uids",
        ),
        (
            "/liveuser/User/QueryUser",
            r#"{"u\u0069ds":["a"],"uids":["b"]}"#,
            "uids",
        ),
        (
            "/liveuser/Wx/Login",
            r#"{"code":"alice","code":"bob"}"#,
            "code",
        ),
        ("/liveuser/Wx/Login", r#"{"code":"alice","code":1}"#, "code"),
        (
            "/liveuser/Wx/RenewToken",
            r#"{"refresh_token":"lvrt_a","refresh_token":"lvrt_b"}"#,
            "refresh_token",
        ),
        (
            "/liveuser/User/AddUser",
            r#"{"user":{"name":"A"},"user":{"name":"B"}}"#,
            "user",
        ),
        (
            "/liveuser/User/AddUser",
            r#"{"user":{"name":"A","name":"B"}}"#,
            "user.name",
        ),
        (
            "/liveuser/User/AddUser",
            r#"{"user":{"name":"A","name":2}}"#,
            "user.name",
        ),
        (
            "/liveuser/User/AddUser",
            r#"{"user":{"uid":"","avatar":"","avatar":"https://a.example/x.png"}}"#,
            "user.avatar",
        ),
    ];
    for (path, body, field) in cases {
        let r = app.raw("POST", path, &headers, body.as_bytes());
        r.assert_error(400, "invalid_argument");
        assert_eq!(
            r.str("msg"),
            format!("{field} must appear only once"),
            "{body}"
        );
    }
    // Nothing was written by the refused AddUser calls.
    let me = login.str("uid");
    let q = app.query(&token, &[&me]);
    assert_eq!(q.body["users"][0]["name"], "", "{}", q.text);

    // Repeated keys inside an unknown field are ignored with the field.
    let r = app.raw(
        "POST",
        "/liveuser/User/QueryUser",
        &headers,
        format!(r#"{{"uids":["{me}"],"x":{{"a":1,"a":2}}}}"#).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Sends `request` on a fresh connection and reads until the server closes it (10 s at
/// most): the status of every answer, and the text.
fn statuses_until_closed(app: &TestApp, request: &[u8]) -> (Vec<u16>, String) {
    let mut stream = TcpStream::connect(app.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before reading all of it.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    if let Err(e) = read {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection was left open: {text}"
        );
    }
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

/// Duplicate, contradictory or malformed framing is refused with a 400 (hyper's own,
/// without a body, when the head cannot be framed; `malformed` when the chunks of a body
/// are broken), never a server error; and a request that carries both a length and
/// chunked coding is read as chunked and is the connection's last, so nothing after it
/// can pass for a request of its own (request smuggling).
#[test]
fn odd_http_framing_is_refused_without_a_server_error() {
    let app = TestApp::spawn();
    let body = br#"{"code":"alice"}"#;
    let head = "POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n";
    let with = |headers: &str, rest: &[u8]| [head.as_bytes(), headers.as_bytes(), rest].concat();
    let chunked = |chunks: &[u8]| with("Transfer-Encoding: chunked\r\n\r\n", chunks);
    let sized = |length: &str| with(&format!("Content-Length: {length}\r\n\r\n"), body);
    let one_chunk = [b"10\r\n".as_slice(), body, b"\r\n0\r\n\r\n"].concat();

    let unframed = [
        ("two different lengths", with("Content-Length: 16\r\nContent-Length: 3\r\n\r\n", body)),
        ("a list of lengths", sized("16, 16")),
        ("a negative length", sized("-1")),
        ("a signed length", sized("+16")),
        ("a hexadecimal length", sized("0x10")),
        ("a length past u64", sized("99999999999999999999999")),
        ("a space before the colon", with("Content-Length : 16\r\n\r\n", body)),
        ("a folded length", with("Content-Length:\r\n 16\r\n\r\n", body)),
        ("a coding that is not chunked", with("Transfer-Encoding: gzip\r\n\r\n", body)),
        ("chunked not last", with("Transfer-Encoding: chunked, gzip\r\n\r\n", &one_chunk)),
        ("an unknown coding", with("Transfer-Encoding: xchunked\r\n\r\n", &one_chunk)),
        (
            "chunked in HTTP/1.0",
            [
                b"POST /liveuser/Wx/Login HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
                &one_chunk,
            ]
            .concat(),
        ),
    ];
    for (case, request) in &unframed {
        let (statuses, text) = statuses_until_closed(&app, request);
        assert_eq!(statuses, [400], "{case}: {text}");
    }

    let broken_chunks = [
        (
            "a size that is not hex",
            chunked(&[b"zz\r\n".as_slice(), body, b"\r\n0\r\n\r\n"].concat()),
        ),
        (
            "a size past u64",
            chunked(
                &[
                    b"ffffffffffffffffffff\r\n".as_slice(),
                    body,
                    b"\r\n0\r\n\r\n",
                ]
                .concat(),
            ),
        ),
        (
            "a negative size",
            chunked(&[b"-10\r\n".as_slice(), body, b"\r\n0\r\n\r\n"].concat()),
        ),
        (
            "more data than the size",
            chunked(&[b"2\r\n".as_slice(), body, b"\r\n0\r\n\r\n"].concat()),
        ),
        (
            "no line end after the data",
            chunked(&[b"10\r\n".as_slice(), body, b"0\r\n\r\n"].concat()),
        ),
        (
            "bare line feeds",
            chunked(&[b"10\n".as_slice(), body, b"\n0\n\n"].concat()),
        ),
    ];
    for (case, request) in &broken_chunks {
        let (statuses, text) = statuses_until_closed(&app, request);
        assert_eq!(statuses, [400], "{case}: {text}");
        assert!(text.contains(r#"{"code":"malformed","#), "{case}: {text}");
    }

    // Framings that are odd but say one thing are read as they say.
    let agreed = [
        (
            "the same length twice",
            with("Content-Length: 16\r\nContent-Length: 16\r\n\r\n", body),
        ),
        (
            "chunked twice",
            with(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                &one_chunk,
            ),
        ),
        (
            "a chunk extension",
            chunked(&[b"10;x=y\r\n".as_slice(), body, b"\r\n0\r\n\r\n"].concat()),
        ),
        (
            "a trailer",
            chunked(&[b"10\r\n".as_slice(), body, b"\r\n0\r\nX-Trailer: 1\r\n\r\n"].concat()),
        ),
    ];
    for (case, request) in &agreed {
        let (statuses, text) = statuses_until_closed(&app, request);
        assert_eq!(statuses, [200], "{case}: {text}");
    }

    // A length and chunked coding together, keep-alive, with a second request hidden
    // where the length would end the first (either way round): one answer, then closed.
    let hidden = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
    ] {
        let request = [
            b"POST /liveuser/Wx/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                .as_slice(),
            framing.as_bytes(),
            b"\r\n",
            &one_chunk,
            hidden,
        ]
        .concat();
        let (statuses, text) = statuses_until_closed(&app, &request);
        assert_eq!(statuses, [200], "{framing:?}: {text}");
        assert!(text.contains(r#""uid":""#), "{framing:?}: {text}");
    }
    assert_eq!(app.raw("GET", "/healthz", &[], b"").status, 200, "still up");
}
