//! `examples/nginx/liveuser.conf`, run as a backend developer would: the real nginx from
//! Debian's packages in front of a tiny backend, checking every request with liveuser's
//! `/liveuser/Auth/Check` (`auth_request`), the real `liveuser` executable behind it.
//!
//! Without nginx installed the test says so and does not run — except in CI (`CI` set),
//! where it fails: `.ci/run` installs nginx, and a green run must mean this ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Binary, Reply, agent, binary_config, cli, jwt_claims, login, send};

const EXAMPLE: &str = include_str!("../../examples/nginx/liveuser.conf");

/// The nginx executable, or `None` (said once) where it is not installed outside CI.
fn nginx() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("nginx is not installed; .ci/run installs it (apt-get install nginx-light)");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: the nginx example test did not run: install nginx (apt-get install nginx-light)"
        );
    }
    found
}

/// A backend that answers every request with the caller headers it received, and
/// counts its calls.
struct Backend {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Backend {
    fn start() -> Backend {
        use warp::Filter;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen: Arc<Mutex<Vec<HashMap<String, String>>>> = Arc::default();
        let log = seen.clone();
        let route = warp::header::headers_cloned().map(move |headers: warp::http::HeaderMap| {
            let get = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut call = HashMap::new();
            call.insert("uid".to_string(), get("x-liveuser-uid"));
            call.insert("session".to_string(), get("x-liveuser-session"));
            log.lock().unwrap().push(call.clone());
            warp::reply::json(&call)
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(warp::serve(route).incoming(listener).run());
        Backend {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// nginx, started with the example, stopped when dropped.
struct Nginx {
    child: Child,
    base: String,
    prefix: tempfile::TempDir,
}

impl Nginx {
    fn start(binary: &Path, liveuser: &str, backend: &str) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        // The example as shipped, with this test's three addresses.
        let site = EXAMPLE
            .replace("127.0.0.1:8080", liveuser)
            .replace("127.0.0.1:9000", backend)
            .replace("127.0.0.1:8000", &listen);
        assert_ne!(
            site, EXAMPLE,
            "the example's addresses are where the test expects"
        );
        std::fs::write(prefix.path().join("liveuser.conf"), site).unwrap();
        let p = prefix.path().display();
        // What a distribution's nginx.conf provides around a conf.d file, inside the
        // test's own prefix.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;\n"
        } else {
            ""
        };
        let main = format!(
            "{user}worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  \
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  \
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  \
             include {p}/liveuser.conf;\n}}\n"
        );
        let conf = prefix.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(prefix.path())
            .arg("-e")
            .arg(prefix.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            child,
            base: format!("http://{listen}"),
            prefix,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&listen).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen:\n{}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default()
    }

    fn get(&self, path: &str, headers: &[(&str, String)]) -> Reply {
        send(
            &agent(),
            "GET",
            &format!("{}{path}", self.base),
            headers,
            b"",
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_nginx_example_lets_valid_tokens_through_with_the_uid_and_refuses_missing_and_revoked_ones() {
    let Some(binary) = nginx() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let backend = Backend::start();
    let proxy = Nginx::start(&binary, &server.addr.to_string(), &backend.addr.to_string());

    // Login through the proxy, as the mini-program would.
    let grant = send(
        &agent(),
        "POST",
        &format!("{}/liveuser/Wx/Login", proxy.base),
        &[("content-type", "application/json".into())],
        json!({"code": "alice"}).to_string().as_bytes(),
    );
    assert_eq!(grant.status, 200, "{}", grant.text);
    let token = grant.str("access_token");
    let uid = grant.str("uid");
    let sid = jwt_claims(&token)["sid"].as_str().unwrap().to_string();
    let bearer = vec![("authorization", format!("Bearer {token}"))];

    let r = proxy.get("/orders/42", &bearer);
    assert_eq!(r.status, 200, "{}\n{}", r.text, proxy.log());
    assert_eq!(
        r.body,
        json!({"uid": uid, "session": sid}),
        "the backend sees the caller"
    );

    // Headers of those names from the client never reach the backend as sent.
    let mut spoofed = bearer.clone();
    spoofed.push(("x-liveuser-uid", "admin".into()));
    spoofed.push(("x-liveuser-session", "0".repeat(32)));
    let r = proxy.get("/orders/42", &spoofed);
    assert_eq!(r.body, json!({"uid": uid, "session": sid}));
    let calls = backend.calls();

    // No token, or a bad one: liveuser's 401, and the backend is not asked.
    for headers in [
        vec![],
        vec![("authorization", "Bearer not-a-token".to_string())],
    ] {
        let r = proxy.get("/orders/42", &headers);
        r.assert_error(401, "unauthenticated");
        let only = proxy.get("/orders/42", &[("x-liveuser-uid", uid.clone())]);
        assert_eq!(only.status, 401, "a uid header alone is no credential");
    }
    assert_eq!(
        backend.calls(),
        calls,
        "refused requests never reach the backend"
    );

    // After `liveuser session revoke`, the same token is refused at once.
    let config = dir.path().join("liveuser.toml");
    let revoked = cli(&config, &["session", "revoke", &sid]);
    assert_eq!(revoked.ok(), "revoked 1 session; 0 had already ended\n");
    proxy
        .get("/orders/42", &bearer)
        .assert_error(401, "unauthenticated");
    assert_eq!(backend.calls(), calls);

    // A fresh login works again.
    let fresh = login(&server.base, "alice").str("access_token");
    let r = proxy.get("/", &[("authorization", format!("Bearer {fresh}"))]);
    assert_eq!(r.status, 200, "{}", r.text);
    let body: Value = r.body;
    assert_eq!(body["uid"], uid.as_str());
}

crate::on_postgres!(
    the_nginx_example_lets_valid_tokens_through_with_the_uid_and_refuses_missing_and_revoked_ones,
);
