//! liveuser in this process: [`TestApp`] starts the server with [`app::start`] on
//! loopback port 0, with its database in a temp dir (or a PostgreSQL schema of its own),
//! mock WeChat or the fake one, and an [`OffsetClock`] the test moves; it restarts it on
//! the same database, and calls the API as a mini-program would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use liveuser::app::{self, Running};
use liveuser::clock::OffsetClock;
use liveuser::config::{Config, WxMode};
use liveuser::secret::Secret;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::http::{Reply, agent, post_json, send};
use super::postgres::{Backend, backend, postgres_storage};
use super::wechat::{FakeWeChat, WX_APPID, WX_SECRET};

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

/// The configuration of a [`TestApp`]: both listeners on loopback port 0, the database
/// in `dir` (or, in a PostgreSQL test, the schema of `dir`), mock WeChat.
pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.storage.path = dir.path().join("db");
    config.storage.cache_capacity_bytes = 16 * 1024 * 1024;
    postgres_storage(&mut config, dir.path());
    config.wx.mode = WxMode::Mock;
    config
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
