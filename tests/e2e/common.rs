//! The test harness: a real liveuser server on a loopback port 0, a real sled database
//! in a temp dir, a fake WeChat that is a real HTTP server on loopback, and a blocking
//! HTTP client (ureq) to talk to them as a mini-program would. The executable itself
//! ([`Binary`]) runs on loopback port 0 too, and says on stdout which ports it bound.
//!
//! The storage backend is a parameter: a test run through [`on_postgres`] (modules list
//! theirs with [`on_postgres!`](crate::on_postgres)) gets the real PostgreSQL at
//! `LIVEUSER_TEST_POSTGRES_URL` instead of sled, every configuration it builds
//! ([`test_config`], [`binary_config`]) pointing at a schema of its own (one per temp
//! dir), created for it and dropped after it, so tests run in parallel.
#![allow(dead_code)] // each test module uses a different part of the harness

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use liveuser::app::{self, Running};
use liveuser::clock::OffsetClock;
use liveuser::config::{Config, WxMode};
use liveuser::secret::Secret;
use serde_json::{Value, json};
use tempfile::TempDir;
use warp::Filter;

/// The app secret the fake WeChat expects; tests check it never leaks.
pub const WX_SECRET: &str = "wx-secret-7f3a9c1e5b2d4f60";
/// The appid the fake WeChat expects.
pub const WX_APPID: &str = "wx-test-appid";

/// A running liveuser with everything it talks to.
pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub clock: Arc<OffsetClock>,
    pub wx: Option<FakeWeChat>,
    pub dir: TempDir,
    pub config: Config,
    running: Option<Running>,
    runtime: tokio::runtime::Runtime,
    agent: ureq::Agent,
}

/// An answer: status and parsed JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: HashMap<String, String>,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A string field of the body.
    pub fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field} in {}", self.text))
            .to_string()
    }

    /// Asserts an error answer with this status and code, and the error body shape.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.text
        );
        assert!(
            self.body["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {}",
            self.text
        );
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
}

pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.storage.path = dir.path().join("db");
    config.storage.cache_capacity_bytes = 16 * 1024 * 1024;
    if let Some(url) = postgres_url_for(dir.path()) {
        config.storage.backend = liveuser::config::StorageBackend::Postgres;
        config.storage.postgres_url = Secret::new(url);
        config.storage.postgres_pool_size = POOL_SIZE;
    }
    config.wx.mode = WxMode::Mock;
    config
}

// ----- the storage backend -----

/// The variable naming the PostgreSQL server the PostgreSQL tests use.
pub const POSTGRES_URL_VAR: &str = "LIVEUSER_TEST_POSTGRES_URL";

/// Pool size of test instances: many run at once against one server.
const POOL_SIZE: usize = 4;

/// Where a test's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// sled in the test's temp dir (the default).
    Sled,
    /// A schema of its own on the PostgreSQL server at `LIVEUSER_TEST_POSTGRES_URL`.
    Postgres,
}

/// The PostgreSQL state of the running test: the server, and a schema per temp dir.
struct PgTest {
    server: String,
    schemas: HashMap<std::path::PathBuf, String>,
}

thread_local! {
    // Each test runs on its own thread, so this is the test's own.
    static POSTGRES: RefCell<Option<PgTest>> = const { RefCell::new(None) };
}

/// How the CLI says it reached a running server's database: through its admin API on
/// sled, directly on PostgreSQL (which any number of processes share).
pub fn cli_path_to_running_server() -> &'static str {
    match backend() {
        Backend::Sled => "admin API",
        Backend::Postgres => "directly",
    }
}

/// The backend the running test uses.
pub fn backend() -> Backend {
    if POSTGRES.with_borrow(Option::is_some) {
        Backend::Postgres
    } else {
        Backend::Sled
    }
}

/// The PostgreSQL server of the PostgreSQL tests, if `LIVEUSER_TEST_POSTGRES_URL` is set;
/// says once (on the terminal, past the test harness's capture) that they did not run.
pub fn postgres_server() -> Option<String> {
    static SAID: std::sync::Once = std::sync::Once::new();
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: the PostgreSQL tests did not run: set {POSTGRES_URL_VAR} \
                     (e.g. postgres://root@127.0.0.1:5432/test) to run them"
                );
            });
            None
        }
    }
}

/// Runs `test` with PostgreSQL as the backend: every configuration it builds gets a
/// fresh schema, dropped when the test ends (passed or not). Without
/// `LIVEUSER_TEST_POSTGRES_URL` the test does not run (and that is said once).
pub fn on_postgres(test: impl FnOnce()) {
    let Some(server) = postgres_server() else {
        return;
    };
    struct DropSchemas;
    impl Drop for DropSchemas {
        fn drop(&mut self) {
            if let Some(pg) = POSTGRES.take() {
                for schema in pg.schemas.values() {
                    let dropped = psql(
                        &pg.server,
                        &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
                    );
                    if let Err(e) = dropped {
                        eprintln!("could not drop schema {schema}: {e}");
                    }
                }
            }
        }
    }
    POSTGRES.set(Some(PgTest {
        server,
        schemas: HashMap::new(),
    }));
    let _drop = DropSchemas;
    test();
}

/// The URL of the schema that belongs to `dir` in the running PostgreSQL test (created
/// at the first call), or `None` when the test runs on sled.
pub fn postgres_url_for(dir: &std::path::Path) -> Option<String> {
    POSTGRES.with_borrow_mut(|pg| {
        let pg = pg.as_mut()?;
        let schema = match pg.schemas.get(dir) {
            Some(schema) => schema.clone(),
            None => {
                let schema = format!("lu_test_{:016x}", u64::from_le_bytes(rand_bytes()));
                psql(&pg.server, &format!("CREATE SCHEMA \"{schema}\""))
                    .unwrap_or_else(|e| panic!("PostgreSQL at {POSTGRES_URL_VAR}: {e}"));
                pg.schemas.insert(dir.to_path_buf(), schema.clone());
                schema
            }
        };
        Some(schema_url(&pg.server, &schema))
    })
}

/// Gives `dir` the schema `name` (created now) instead of a generated one, in the running
/// PostgreSQL test, for names a test chooses (long ones, ones that need quoting).
pub fn postgres_schema_named(dir: &std::path::Path, name: &str) {
    POSTGRES.with_borrow_mut(|pg| {
        let pg = pg.as_mut().expect("a PostgreSQL test");
        psql(&pg.server, &format!("CREATE SCHEMA \"{name}\"")).unwrap();
        pg.schemas.insert(dir.to_path_buf(), name.to_string());
    });
}

/// `server` with its search_path set to `schema`: the name as it is when it needs no
/// quoting, else double-quoted and percent-encoded (the server splits `options` at
/// spaces, so a space is escaped for it first).
pub fn schema_url(server: &str, schema: &str) -> String {
    let sep = if server.contains('?') { '&' } else { '?' };
    let plain = schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let value = if plain {
        schema.to_string()
    } else {
        format!("\"{}\"", schema.replace('"', "\"\"").replace(' ', "\\ "))
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect()
    };
    format!("{server}{sep}options=-csearch_path%3D{value}")
}

fn rand_bytes() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish().to_le_bytes()
}

/// Runs `sql` on the PostgreSQL server `url` (one connection, then closed).
pub fn psql(url: &str, sql: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(url, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
        let driver = tokio::spawn(connection);
        let result = client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"));
        drop(client);
        let _ = driver.await;
        result
    })
}

/// Runs the listed tests of the module again on PostgreSQL, as `<module>::postgres::<test>`.
#[macro_export]
macro_rules! on_postgres {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[test]
                fn $test() {
                    $crate::common::on_postgres(super::$test)
                }
            )*
        }
    };
}

impl TestApp {
    /// liveuser in mock WeChat mode with the default configuration.
    pub fn spawn() -> TestApp {
        Self::spawn_with(|_| {})
    }

    /// liveuser in mock mode, with `tweak` applied to the configuration.
    pub fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&dir);
        tweak(&mut config);
        Self::start(dir, config, None, Arc::new(OffsetClock::new()))
    }

    /// liveuser in real WeChat mode against a fake WeChat on loopback.
    pub fn spawn_wechat(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let wx = FakeWeChat::start();
        let mut config = test_config(&dir);
        config.wx.mode = WxMode::Wechat;
        config.wx.appid = WX_APPID.into();
        config.wx.secret = Secret::new(WX_SECRET.into());
        config.wx.api_base = wx.base.clone();
        config.wx.timeout_ms = 500;
        tweak(&mut config);
        Self::start(dir, config, Some(wx), Arc::new(OffsetClock::new()))
    }

    /// liveuser in mock mode on the database already in `dir` (as `dir/db`), with the
    /// server's clock `clock` (set before the start, as a database's keys are read then).
    pub fn spawn_in(dir: TempDir, clock: Arc<OffsetClock>) -> TestApp {
        let config = test_config(&dir);
        Self::start(dir, config, None, clock)
    }

    fn start(
        dir: TempDir,
        config: Config,
        wx: Option<FakeWeChat>,
        clock: Arc<OffsetClock>,
    ) -> TestApp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = runtime
            .block_on(app::start(&config, clock.clone()))
            .expect("server starts");
        let addr = running.addr;
        TestApp {
            base: format!("http://{addr}"),
            addr,
            admin_addr: running.admin_addr,
            clock,
            wx,
            dir,
            config,
            running: Some(running),
            runtime,
            agent: agent(),
        }
    }

    /// Stops the server (drains, flushes) and starts a new one on the same database.
    pub fn restart(&mut self) {
        let running = self.running.take().unwrap();
        self.runtime.block_on(running.shutdown());
        let running = self
            .runtime
            .block_on(app::start(&self.config, self.clock.clone()))
            .expect("server restarts");
        self.addr = running.addr;
        self.admin_addr = running.admin_addr;
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    /// Moves the server's clock.
    pub fn advance(&self, secs: i64) {
        self.clock.advance(secs);
    }

    /// Sets the server's clock to the start of Unix second `secs` (forward or back), so
    /// that it reads `secs` for most of a second from now. A test that places a request
    /// just before a boundary uses it: the clock follows the wall clock, so after an
    /// `advance` counted from an earlier answer, a second ticking in between moves the
    /// request onto the boundary.
    pub fn set_clock(&self, secs: u64) {
        use liveuser::clock::Clock as _;
        let to_ms = i64::try_from(secs * 1000).expect("a time in range");
        let now_ms = i64::try_from(self.clock.now_ms()).expect("a time in range");
        self.clock.advance_ms(to_ms - now_ms);
    }

    /// Runs a future on the server's runtime (e.g. to sweep or inspect the store).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The running service.
    pub fn service(&self) -> &liveuser::service::Service<liveuser::store::AnyStore> {
        &self.running.as_ref().unwrap().service
    }

    /// POST a JSON body to `path`, optionally with a Bearer token.
    pub fn post(&self, path: &str, body: &Value, bearer: Option<&str>) -> Reply {
        post_json(&self.agent, &format!("{}{path}", self.base), body, bearer)
    }

    /// Any request, byte for byte.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
        send(
            &self.agent,
            method,
            &format!("{}{path}", self.base),
            headers,
            body,
        )
    }

    pub fn login(&self, code: &str) -> Reply {
        self.post("/liveuser/Wx/Login", &json!({ "code": code }), None)
    }

    /// Logs in and asserts success.
    #[track_caller]
    pub fn login_ok(&self, code: &str) -> Reply {
        let r = self.login(code);
        assert_eq!(r.status, 200, "login failed: {}", r.text);
        r
    }

    pub fn renew(&self, refresh_token: &str) -> Reply {
        self.post(
            "/liveuser/Wx/RenewToken",
            &json!({ "refresh_token": refresh_token }),
            None,
        )
    }

    pub fn add_user(&self, token: &str, user: Value) -> Reply {
        self.post(
            "/liveuser/User/AddUser",
            &json!({ "user": user }),
            Some(token),
        )
    }

    pub fn query(&self, token: &str, uids: &[&str]) -> Reply {
        self.post(
            "/liveuser/User/QueryUser",
            &json!({ "uids": uids }),
            Some(token),
        )
    }
}

/// Lets `secs` pass after a rotation on `app`, as far as its retry grace is concerned:
/// its clock moves on, and on PostgreSQL, whose own clock times the grace, the test also
/// waits them out.
pub fn past_the_grace(app: &TestApp, secs: u64) {
    app.advance(i64::try_from(secs).unwrap());
    if backend() == Backend::Postgres {
        std::thread::sleep(Duration::from_secs(secs));
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown());
        }
    }
}

pub fn agent() -> ureq::Agent {
    agent_timing_out(Duration::from_secs(30))
}

/// A client that gives up on a request after `timeout`, and takes any status as an answer.
fn agent_timing_out(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}

/// Sends one request and collects the answer.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let request = builder.body(body.to_vec()).unwrap();
    let mut response = agent.run(request).expect("request completes");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        text,
        headers,
    }
}

/// POSTs a JSON body to `base` + `path` (e.g. a [`Binary`]'s), optionally with a Bearer
/// token.
pub fn post(base: &str, path: &str, body: Value, bearer: Option<&str>) -> Reply {
    post_json(&agent(), &format!("{base}{path}"), &body, bearer)
}

/// `Wx.RenewToken` with `token` on the server at `base`.
pub fn renew(base: &str, token: &str) -> Reply {
    post(
        base,
        "/liveuser/Wx/RenewToken",
        json!({ "refresh_token": token }),
        None,
    )
}

/// A JSON call as a mini-program makes it, for [`TestApp::post`] and [`post`]: the body
/// with its content type, and the access token when there is one.
fn post_json(agent: &ureq::Agent, url: &str, body: &Value, bearer: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(token) = bearer {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    send(agent, "POST", url, &headers, body.to_string().as_bytes())
}

/// Logs in at `base` with `code` and asserts success.
#[track_caller]
pub fn login(base: &str, code: &str) -> Reply {
    let r = post(base, "/liveuser/Wx/Login", json!({ "code": code }), None);
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

/// A fake WeChat `jscode2session` on loopback. The code says how it answers:
///
/// | code                | answer                                              |
/// |---------------------|-----------------------------------------------------|
/// | `ok-<x>`            | openid `openid-<x>`, unionid `union-<x>`            |
/// | `slow-ok-<x>`       | the same after 300 ms                               |
/// | `e<N>`              | `{"errcode": N}`                                    |
/// | `busy-once-<x>`     | -1 on the first call, then like `ok-<x>`            |
/// | `busy-always`       | -1 every time                                       |
/// | `http500`           | HTTP 500                                            |
/// | `garbage`           | 200 with an HTML body                               |
/// | `hang`              | waits 5 s (past any test timeout)                   |
/// | `held-<x>`          | waits until [`FakeWeChat::release`], then `ok-<x>`  |
///
/// Any code may end with `~<tag>`: it answers as the code without the tag, so a test can
/// make every code it sends unique (e.g. to look for it in a log). A wrong appid or
/// secret answers errcode 40125, so a test that logs in proves both were sent. Every call
/// is counted per code, tag included.
pub struct FakeWeChat {
    pub base: String,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    released: tokio::sync::watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeWeChat {
    pub fn start() -> FakeWeChat {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = calls.clone();
        let (released, gate) = tokio::sync::watch::channel(false);
        let route = warp::path!("sns" / "jscode2session")
            .and(warp::query::<HashMap<String, String>>())
            .then(move |q: HashMap<String, String>| {
                let counter = counter.clone();
                let mut gate = gate.clone();
                async move {
                    if let Some(x) = q.get("js_code").and_then(|c| c.strip_prefix("held-")) {
                        let x = x.to_string();
                        count(&counter, &format!("held-{x}"));
                        let _ = gate.wait_for(|open| *open).await;
                        let mut q = q;
                        q.insert("js_code".into(), format!("ok-{x}"));
                        return answer(&counter, q).await;
                    }
                    answer(&counter, q).await
                }
            });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(warp::serve(route).incoming(listener).run());
        FakeWeChat {
            base: format!("http://{addr}"),
            calls,
            released,
            _runtime: runtime,
        }
    }

    /// Lets every `held-<x>` call, waiting or future, answer.
    pub fn release(&self) {
        let _ = self.released.send(true);
    }

    /// How many times WeChat was asked about `code`.
    pub fn calls(&self, code: &str) -> usize {
        self.calls.lock().unwrap().get(code).copied().unwrap_or(0)
    }
}

async fn answer(
    counter: &Mutex<HashMap<String, usize>>,
    q: HashMap<String, String>,
) -> warp::reply::Response {
    use warp::Reply as _;
    let tagged = q.get("js_code").cloned().unwrap_or_default();
    let n = count(counter, &tagged);
    let code = tagged
        .split_once('~')
        .map_or(tagged.as_str(), |(code, _)| code);
    let json = |v: Value| warp::reply::json(&v).into_response();
    if q.get("appid").map(String::as_str) != Some(WX_APPID)
        || q.get("secret").map(String::as_str) != Some(WX_SECRET)
        || q.get("grant_type").map(String::as_str) != Some("authorization_code")
    {
        return json(json!({"errcode": 40125, "errmsg": "invalid appsecret"}));
    }
    let ok = |x: &str| {
        json(json!({
            "openid": format!("openid-{x}"),
            "unionid": format!("union-{x}"),
            "session_key": "c2Vzc2lvbi1rZXk="
        }))
    };
    if let Some(x) = code.strip_prefix("ok-") {
        return ok(x);
    }
    if let Some(x) = code.strip_prefix("slow-ok-") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return ok(x);
    }
    if let Some(x) = code.strip_prefix("busy-once-") {
        if n == 1 {
            return json(json!({"errcode": -1, "errmsg": "system error"}));
        }
        return ok(x);
    }
    match code {
        "busy-always" => json(json!({"errcode": -1, "errmsg": "system error"})),
        "http500" => {
            warp::reply::with_status("oops", warp::http::StatusCode::INTERNAL_SERVER_ERROR)
                .into_response()
        }
        "garbage" => warp::reply::html("<html>not json</html>").into_response(),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok("late")
        }
        other => match other.strip_prefix('e').and_then(|n| n.parse::<i64>().ok()) {
            Some(errcode) => json(json!({"errcode": errcode, "errmsg": "error"})),
            None => json(json!({"errcode": 40029, "errmsg": "invalid code"})),
        },
    }
}

fn count(counter: &Mutex<HashMap<String, usize>>, code: &str) -> usize {
    let mut calls = counter.lock().unwrap();
    let n = calls.entry(code.to_string()).or_insert(0);
    *n += 1;
    *n
}

/// Decodes a JWT's claims without checking anything (to compare with the answer).
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The real `liveuser` executable, started as an operator would.
pub struct Binary {
    pub child: std::process::Child,
    pub base: String,
    pub addr: SocketAddr,
    /// The admin API's TCP address (none on PostgreSQL, which serves no admin API).
    pub admin_addr: Option<SocketAddr>,
    /// The line the server wrote on stdout when it began to serve.
    pub ready: String,
    pub log: Arc<Mutex<String>>,
}

/// How long a start may take to say it serves.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Binary {
    /// Writes `config_toml` to `dir/liveuser.toml` and runs `liveuser serve` with it, on
    /// loopback port 0 for both listeners (the test's `env` may say otherwise); returns
    /// once the server says on stdout which addresses it bound.
    pub fn serve(dir: &std::path::Path, config_toml: &str, env: &[(&str, &str)]) -> Binary {
        Self::serve_with(dir, config_toml, env, |_| {})
    }

    /// [`Binary::serve`], with `tweak` applied to the command before it starts (e.g. to
    /// set resource limits on the child).
    pub fn serve_with(
        dir: &std::path::Path,
        config_toml: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Binary {
        let config = dir.join("liveuser.toml");
        std::fs::write(&config, config_toml).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"));
        command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir)
            .env("LIVEUSER_SERVER_LISTEN", "127.0.0.1:0")
            .env("LIVEUSER_SERVER_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        tweak(&mut command);
        let mut child = command.spawn().expect("liveuser starts");
        let log = Arc::new(Mutex::new(String::new()));
        // Both pipes are read all along: a full pipe would stall the server.
        let stderr = read_lines(child.stderr.take().unwrap(), {
            let log = log.clone();
            move |line| {
                let mut log = log.lock().unwrap();
                log.push_str(line);
                log.push('\n');
            }
        });
        let (ready, said) = std::sync::mpsc::channel();
        read_lines(child.stdout.take().unwrap(), move |line| {
            if line.starts_with("listening ") {
                let _ = ready.send(line.to_string());
            }
        });
        let ready = match said.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed without the line: the process ended; its log says why.
                let status = child.wait().unwrap();
                let _ = stderr.join();
                let log = log.lock().unwrap().clone();
                panic!("liveuser exited ({status}) before it served:\n{log}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().unwrap().clone();
                panic!("liveuser did not serve within {START_TIMEOUT:?}:\n{log}");
            }
        };
        let (addr, admin_addr) = bound_addresses(&ready);
        Binary {
            child,
            base: format!("http://{addr}"),
            addr,
            admin_addr,
            ready,
            log,
        }
    }

    /// Everything the process has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, no warning.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) only sends a signal, to our own child, which has not been
        // waited for yet, so the pid is still its own.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
        self.child.wait().unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hands every line of `pipe` to `each` on a thread of its own, until the pipe closes.
fn read_lines(
    pipe: impl std::io::Read + Send + 'static,
    mut each: impl FnMut(&str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            each(&line);
        }
    })
}

/// The public and admin addresses of a `listening public=<url> [admin=<url>]` line.
fn bound_addresses(line: &str) -> (SocketAddr, Option<SocketAddr>) {
    let mut public = None;
    let mut admin = None;
    for field in line.split(' ').skip(1) {
        let (name, url) = field
            .split_once('=')
            .unwrap_or_else(|| panic!("a name=url field: {line}"));
        let addr: SocketAddr = url
            .split_once("://")
            .and_then(|(_, addr)| addr.parse().ok())
            .unwrap_or_else(|| panic!("a URL of an address: {line}"));
        match name {
            "public" => public = Some(addr),
            "admin" => admin = Some(addr),
            other => panic!("unknown field {other}: {line}"),
        }
    }
    (
        public.unwrap_or_else(|| panic!("no public address: {line}")),
        admin,
    )
}

/// A minimal config for the binary: port 0, database in `dir` (or, in a PostgreSQL test,
/// the schema of `dir`), mock WeChat.
pub fn binary_config(dir: &std::path::Path) -> String {
    let postgres = match postgres_url_for(dir) {
        Some(url) => format!(
            "backend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_pool_size = {POOL_SIZE}\n"
        ),
        None => String::new(),
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\ncache_capacity_bytes = 16777216\n{postgres}[wx]\nmode = \"mock\"\n",
        dir.join("db").display()
    )
}

/// What one run of the `liveuser` executable printed.
#[derive(Debug, Clone)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Asserts exit 0 and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "the command failed: {}", self.stderr);
        &self.stdout
    }

    /// Asserts exit 1 with exactly one `liveuser: ` line on stderr, and returns it.
    #[track_caller]
    pub fn failed(&self) -> &str {
        assert_eq!(self.code, 1, "expected a failure: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {:?}", self.stderr);
        assert!(lines[0].starts_with("liveuser: "), "{:?}", self.stderr);
        lines[0]
    }
}

/// Runs `liveuser --config <config> <args>` to completion.
pub fn cli(config: &std::path::Path, args: &[&str]) -> CliRun {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
        .env_remove(POSTGRES_URL_VAR)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("liveuser runs");
    CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `binary_config(dir)` to `dir/liveuser.toml` and returns its path, for CLI runs
/// against a database with no server.
pub fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("liveuser.toml");
    std::fs::write(&path, binary_config(dir)).unwrap();
    path
}
