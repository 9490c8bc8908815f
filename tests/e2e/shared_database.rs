//! What comes at liveuser through the PostgreSQL server it shares: other roles of the
//! server (listening, notifying, holding locks, lacking grants), operators editing tables
//! in SQL, a schema name at PostgreSQL's limit, instances whose clocks disagree, a start
//! that has to wait, and hostile text and URLs. Every test here runs only with
//! `LIVEUSER_TEST_POSTGRES_URL` set, except the two that reach no PostgreSQL at all (a
//! silent socket, or URLs that cannot be used).

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use liveuser::config::Config;
use liveuser::secret::Secret;
use serde_json::json;

use crate::common::{
    Binary, CliRun, TestApp, binary_config, cli, jwt_claims, on_postgres, postgres_schema_named,
    postgres_server, write_config,
};

// ----- helpers -----

/// A connection of the test's own to the PostgreSQL server, keeping every notification
/// it receives.
struct Conn {
    client: tokio_postgres::Client,
    heard: Arc<Mutex<Vec<(String, String)>>>,
    runtime: tokio::runtime::Runtime,
}

impl Conn {
    fn open(url: &str) -> Conn {
        use futures_util::future::poll_fn;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let heard: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let client = runtime.block_on(async {
            let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            let heard = heard.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = message {
                        heard
                            .lock()
                            .unwrap()
                            .push((n.channel().to_string(), n.payload().to_string()));
                    }
                }
            });
            client
        });
        Conn {
            client,
            heard,
            runtime,
        }
    }

    /// Runs `sql` (one or more statements).
    fn exec(&self, sql: &str) -> Result<(), String> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| match e.as_db_error() {
                Some(d) => d.message().to_string(),
                None => e.to_string(),
            })
    }

    /// The first column of every row `sql` answers, as text.
    fn column(&self, sql: &str) -> Result<Vec<String>, String> {
        let messages = self
            .runtime
            .block_on(self.client.simple_query(sql))
            .map_err(|e| match e.as_db_error() {
                Some(d) => d.message().to_string(),
                None => e.to_string(),
            })?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or_default().to_string())
                }
                _ => None,
            })
            .collect())
    }

    /// The one value `sql` answers.
    fn value(&self, sql: &str) -> String {
        let column = self.column(sql).unwrap();
        assert_eq!(column.len(), 1, "{sql}: {column:?}");
        column.into_iter().next().unwrap()
    }

    /// The notifications received so far (a round trip first, so that those sent before
    /// this call have arrived).
    fn heard(&self) -> Vec<(String, String)> {
        self.exec("SELECT 1").unwrap();
        self.heard.lock().unwrap().clone()
    }
}

/// A login role of the PostgreSQL server with no privilege but those `grants` gives it,
/// dropped (with everything granted to it) at the end of the test.
struct Role {
    name: String,
    server: String,
}

impl Role {
    fn create(grants: &str) -> Role {
        let server = postgres_server().unwrap();
        let name = format!("lu_role_{:08x}", rand::random::<u32>());
        let admin = Conn::open(&server);
        admin
            .exec(&format!(
                "CREATE ROLE {name} LOGIN; {}",
                grants.replace("{role}", &name)
            ))
            .unwrap();
        Role { name, server }
    }

    /// The server's URL as this role, with `search_path` set to `schema`.
    fn url(&self, schema: &str) -> String {
        let (scheme, rest) = self.server.split_once("://").unwrap();
        let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
        crate::common::schema_url(&format!("{scheme}://{}@{rest}", self.name), schema)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let admin = Conn::open(&self.server);
        let _ = admin.exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{0}'; \
             DROP OWNED BY {0}; DROP ROLE {0}",
            self.name
        ));
    }
}

/// The schema a configuration's `postgres_url` points at (as the harness wrote it).
fn schema_of(url: &str) -> String {
    let raw = url
        .split("search_path%3D")
        .nth(1)
        .and_then(|rest| rest.split(['&', '"']).next())
        .unwrap()
        .as_bytes();
    let mut value = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap();
            value.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            value.push(raw[i]);
            i += 1;
        }
    }
    let value = String::from_utf8(value).unwrap();
    match value.strip_prefix('"') {
        // Up to the closing quote; `""` is a quote, `\ ` a space.
        Some(quoted) => {
            let mut name = String::new();
            let mut chars = quoted.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    '\\' => name.extend(chars.next()),
                    c => name.push(c),
                }
            }
            name
        }
        None => value.split(' ').next().unwrap().to_string(),
    }
}

/// A connection to `app`'s schema as the test's (superuser) role.
fn admin_of(app: &TestApp) -> Conn {
    Conn::open(app.config.storage.postgres_url.expose())
}

/// The notification channel the instances on `conn`'s schema listen on.
fn channel(conn: &Conn) -> String {
    conn.value("SELECT name FROM secret_channel")
}

/// A second instance on `first`'s schema, with `tweak` applied to its configuration.
fn beside(first: &TestApp, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let url = first.config.storage.postgres_url.expose().clone();
    TestApp::spawn_with(|c| {
        c.storage.postgres_url = Secret::new(url);
        tweak(c);
    })
}

/// The sid of an access token, as the `sessions` table's `sid` in SQL.
fn sid_sql(access_token: &str) -> String {
    let sid = jwt_claims(access_token)["sid"]
        .as_str()
        .unwrap()
        .to_string();
    format!("decode('{sid}', 'hex')")
}

/// Polls each app with `token` until it refuses it; the slowest delay since `since`.
fn until_refused(apps: &[&TestApp], token: &str, since: Instant, bound: Duration) -> Duration {
    let mut slowest = Duration::ZERO;
    for app in apps {
        loop {
            let r = app.query(token, &[]);
            if r.status == 401 {
                break;
            }
            assert_eq!(r.status, 200, "{}", r.text);
            assert!(
                since.elapsed() <= bound,
                "an instance still accepts the token {:?} later",
                since.elapsed()
            );
            thread::sleep(Duration::from_millis(2));
        }
        slowest = slowest.max(since.elapsed());
    }
    slowest
}

/// `liveuser <args>` with the configuration at `config`, given at most `limit` to finish;
/// `None` if it had to be killed.
fn cli_within(config: &std::path::Path, args: &[&str], limit: Duration) -> Option<CliRun> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
        .env_remove(crate::common::POSTGRES_URL_VAR)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    Some(CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `liveuser serve` with the configuration at `config`, its log going to `log`.
fn spawn_serve(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
        .env_remove(crate::common::POSTGRES_URL_VAR)
        .env("LIVEUSER_SERVER_LISTEN", "127.0.0.1:0")
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM to `child` and waits at most `limit` for it to exit; how long it took,
/// or `None` (then it is killed).
fn terminate_within(child: &mut std::process::Child, limit: Duration) -> Option<Duration> {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) only sends a signal, to our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if sent.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
    Some(sent.elapsed())
}

/// The key pair of liveuser's migration lock for `schema`, as SQL arguments.
fn migration_lock(schema: &str) -> String {
    format!("1819635047, hashtext('{}')", schema.replace('\'', "''"))
}

// ----- finding 1: the notification channel -----

#[test]
fn a_notification_no_instance_can_read_drops_its_caches_and_leaves_it_healthy() {
    on_postgres(|| {
        let app = TestApp::spawn();
        let admin = admin_of(&app);
        let channel = channel(&admin);
        let s = app.login_ok("ana");
        let (token, uid) = (s.str("access_token"), s.str("uid"));
        let name_of = || app.query(&token, &[&uid]).body["users"][0]["name"].clone();
        assert_eq!(name_of(), "", "the record is read once and cached");
        // A change behind liveuser's back: the cache does not see it.
        admin
            .exec(&format!(
                "UPDATE users SET name = 'edited' WHERE uid = '{uid}'"
            ))
            .unwrap();
        assert_eq!(name_of(), "", "served from the cache");

        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = {
            let (probes, stop, base) = (probes.clone(), stop.clone(), app.base.clone());
            thread::spawn(move || {
                let agent = crate::common::agent();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r =
                        crate::common::send(&agent, "GET", &format!("{base}/healthz"), &[], b"");
                    probes.lock().unwrap().push(r.status);
                    thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let long = "é".repeat(3999);
        let garbage = [
            "é",
            "sé",
            &format!("s{}", "é".repeat(16)),
            &format!("s{}é", "0".repeat(30)),
            "Ué",
            "U",
            "u",
            "",
            "k é",
            "*é",
            "\u{1F600}",
            &long,
        ];
        for payload in garbage {
            admin
                .exec(&format!(
                    "SELECT pg_notify('{channel}', '{}')",
                    payload.replace('\'', "''")
                ))
                .unwrap();
            thread::sleep(Duration::from_millis(60));
        }
        thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        prober.join().unwrap();
        let probes = probes.lock().unwrap();
        let unhealthy = probes.iter().filter(|s| **s != 200).count();
        assert_eq!(
            unhealthy,
            0,
            "{unhealthy} of {} health probes failed while unreadable notifications came",
            probes.len()
        );
        // What it could not read, it took as "anything may have changed".
        assert_eq!(name_of(), "edited");
    });
}

#[test]
fn a_role_without_grants_learns_nothing_from_the_channel_and_cannot_find_its_name() {
    on_postgres(|| {
        let app = TestApp::spawn_with(|c| c.token.reuse_grace_secs = 0);
        let admin = admin_of(&app);
        let schema = schema_of(app.config.storage.postgres_url.expose());
        let channel = channel(&admin);
        // A reporting role, as the README suggests: it may read profiles and identities.
        let role = Role::create(&format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {{role}}"));
        admin
            .exec(&format!(
                "SET search_path = \"{schema}\"; GRANT SELECT ON users, identities TO {}",
                role.name
            ))
            .unwrap();
        let spy = Conn::open(&role.url(&schema));
        assert!(
            spy.column("SELECT name FROM secret_channel")
                .unwrap_err()
                .contains("permission denied"),
            "the channel's name is in a table the role may not read"
        );
        // Whatever the role can read names no channel liveuser listens on.
        let readable = [
            "SELECT coalesce(string_agg(prosrc, ' '), '') FROM pg_proc",
            "SELECT coalesce(string_agg(coalesce(query, ''), ' '), '') FROM pg_stat_activity",
            "SELECT coalesce(string_agg(tgname, ' '), '') FROM pg_trigger",
            "SELECT coalesce(string_agg(setting, ' '), '') FROM pg_settings",
        ];
        for sql in readable {
            let seen = spy.value(sql);
            assert!(!seen.contains(&channel), "{sql} shows the channel");
        }
        // Listening on every name it could guess from what it knows hears nothing.
        for guess in [
            format!("liveuser:{schema}"),
            format!("liveuser_{schema}"),
            "liveuser".to_string(),
            schema.clone(),
        ] {
            spy.exec(&format!("LISTEN \"{guess}\"")).unwrap();
        }
        let t0 = app.login_ok("bea").str("refresh_token");
        assert_eq!(app.renew(&t0).status, 200);
        app.renew(&t0).assert_error(401, "unauthenticated"); // reuse: a revocation
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            spy.heard(),
            vec![],
            "the role heard liveuser's notifications"
        );
        // The instance itself heard the revocation: its own channel works.
        let listener = Conn::open(app.config.storage.postgres_url.expose());
        listener.exec(&format!("LISTEN \"{channel}\"")).unwrap();
        let t0 = app.login_ok("bea2").str("refresh_token");
        assert_eq!(app.renew(&t0).status, 200);
        app.renew(&t0).assert_error(401, "unauthenticated");
        thread::sleep(Duration::from_millis(300));
        assert!(
            listener
                .heard()
                .iter()
                .any(|(c, p)| c == &channel && p.starts_with('s')),
            "{:?}",
            listener.heard()
        );
    });
}

// ----- finding 2: the migration lock, and stopping a start -----

#[test]
fn a_migrated_schema_starts_and_answers_admin_commands_while_any_login_holds_the_migration_lock() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        cli(&config, &["migrate"]).ok();
        let schema = schema_of(&binary_config(dir.path()));
        // Any login may take any advisory lock: no grant is needed.
        let role = Role::create("");
        let holder = Conn::open(&role.url(&schema));
        holder
            .exec(&format!(
                "SELECT pg_advisory_lock({})",
                migration_lock(&schema)
            ))
            .unwrap();
        let started = Instant::now();
        let listed = cli_within(&config, &["user", "list"], Duration::from_secs(15))
            .expect("an admin command does not wait for a lock it does not need");
        listed.ok();
        let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
        assert!(started.elapsed() < Duration::from_secs(15));
        crate::common::login(&server.base, "cid");
        let migrated = cli_within(&config, &["migrate"], Duration::from_secs(15))
            .expect("migrate has nothing to do, so nothing to wait for");
        assert!(!migrated.ok().contains("applied"), "{migrated:?}");
    });
}

/// Writes `dir/liveuser.toml` for the schema of `dir`, with `options` added to the
/// connection's startup options (e.g. `-clock_timeout=2s`).
fn config_with_options(dir: &std::path::Path, options: &str) -> std::path::PathBuf {
    let text = binary_config(dir);
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("postgres_url = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .to_string();
    let encoded: String = options
        .bytes()
        .map(|b| match b {
            b' ' => "%20".to_string(),
            b'=' => "%3D".to_string(),
            _ => (b as char).to_string(),
        })
        .collect();
    let path = dir.join("liveuser.toml");
    std::fs::write(&path, text.replace(&url, &format!("{url}%20{encoded}"))).unwrap();
    path
}

#[test]
fn a_start_that_must_migrate_gives_up_at_lock_timeout_naming_the_session_holding_the_lock() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_options(dir.path(), "-clock_timeout=2s");
        let schema = schema_of(&std::fs::read_to_string(&config).unwrap());
        let role = Role::create("");
        let holder = Conn::open(&role.url(&schema));
        holder
            .exec(&format!(
                "SET application_name = 'lock-holder'; SELECT pg_advisory_lock({})",
                migration_lock(&schema)
            ))
            .unwrap();
        let pid = holder.value("SELECT pg_backend_pid()");
        for command in ["migrate", "serve"] {
            let started = Instant::now();
            let run = cli_within(&config, &[command], Duration::from_secs(20))
                .unwrap_or_else(|| panic!("`{command}` still waits for the lock after 20 s"));
            let waited = started.elapsed();
            assert_eq!(run.code, 1, "{command}: {run:?}");
            // Above it, the warnings said all along whom it was waiting for.
            let line = run.stderr.lines().last().unwrap_or_default();
            assert!(
                line.contains("migration lock")
                    && line.contains(&format!("pid {pid}"))
                    && line.contains("lock-holder")
                    && line.contains(&role.name),
                "{command}: {line}"
            );
            assert!(waited >= Duration::from_secs(2), "{command}: {waited:?}");
        }
        // Once the holder lets go, the migration runs.
        holder
            .exec(&format!(
                "SELECT pg_advisory_unlock({})",
                migration_lock(&schema)
            ))
            .unwrap();
        cli_within(&config, &["migrate"], Duration::from_secs(20))
            .unwrap()
            .ok();
    });
}

#[test]
fn sigterm_stops_a_start_waiting_for_the_migration_lock_and_admin_commands_too() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let schema = schema_of(&binary_config(dir.path()));
        let role = Role::create("");
        let holder = Conn::open(&role.url(&schema));
        holder
            .exec(&format!(
                "SELECT pg_advisory_lock({})",
                migration_lock(&schema)
            ))
            .unwrap();
        let pid = holder.value("SELECT pg_backend_pid()");
        let log = dir.path().join("serve.log");
        let mut server = spawn_serve(&config, &log);
        // Past the first look at the lock: the start is waiting, and says for whom.
        let deadline = Instant::now() + Duration::from_secs(3);
        let said = || std::fs::read_to_string(&log).unwrap();
        while !said().contains(&format!("pid {pid}")) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            server.try_wait().unwrap().is_none(),
            "the start ended early:\n{}",
            said()
        );
        let took = terminate_within(&mut server, Duration::from_secs(5));
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(2)),
            "SIGTERM did not stop the waiting start ({took:?}):\n{}",
            said()
        );
        assert!(said().contains(&format!("pid {pid}")), "{}", said());
        assert!(
            server.wait().unwrap().success(),
            "a stop asked for is a clean exit"
        );

        let mut admin = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
            .env_remove(crate::common::POSTGRES_URL_VAR)
            .arg("--config")
            .arg(&config)
            .args(["user", "list"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(1500));
        assert!(admin.try_wait().unwrap().is_none(), "it waits for the lock");
        assert!(terminate_within(&mut admin, Duration::from_secs(2)).is_some());
    });
}

/// A start whose database accepts the connection and never answers is stopped by
/// SIGTERM at once, not after the connect timeout. (No PostgreSQL needed: the
/// "database" is a socket that says nothing.)
#[test]
fn sigterm_stops_a_start_whose_database_does_not_answer() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("liveuser.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nbackend = \"postgres\"\n\
             postgres_url = \"postgres://lu@127.0.0.1:{port}/lu?sslmode=disable&connect_timeout=30\"\n\
             [wx]\nmode = \"mock\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let mut server = spawn_serve(&config, &log);
    let (_conn, _) = silent.accept().unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        server.try_wait().unwrap().is_none(),
        "it is waiting for the database"
    );
    let took = terminate_within(&mut server, Duration::from_secs(10));
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "SIGTERM did not stop a start waiting for the database ({took:?}):\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

// ----- finding 3: any schema name -----

#[test]
fn a_schema_name_of_63_bytes_that_needs_quoting_works_revocations_included() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut name = format!("Lu-Test {:08x} ", rand::random::<u32>());
        while name.len() < 63 {
            name.push('é');
        }
        assert_eq!(name.len(), 63, "PostgreSQL's longest identifier");
        postgres_schema_named(dir.path(), &name);
        let text = format!(
            "{}[token]\nreuse_grace_secs = 0\n",
            binary_config(dir.path())
        );
        let a = Binary::serve(dir.path(), &text, &[]);
        let b = Binary::serve(dir.path(), &text, &[]);
        let admin = Conn::open(&crate::common::postgres_url_for(dir.path()).unwrap());
        assert_eq!(admin.value("SELECT current_schema()"), name);

        // Reuse detected on A: A answers as for any reuse, and B refuses the session.
        let s = crate::common::login(&a.base, "dee");
        let access = s.str("access_token");
        let query = |base: &str| {
            crate::common::post(
                base,
                "/liveuser/User/QueryUser",
                json!({"uids": []}),
                Some(&access),
            )
        };
        assert_eq!(query(&b.base).status, 200);
        let t0 = s.str("refresh_token");
        assert_eq!(crate::common::renew(&a.base, &t0).status, 200);
        crate::common::renew(&a.base, &t0).assert_error(401, "unauthenticated");
        let since = Instant::now();
        while query(&b.base).status != 401 {
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "B still accepts it"
            );
            thread::sleep(Duration::from_millis(5));
        }

        // `session revoke --all` from the CLI, both instances running.
        let s = crate::common::login(&b.base, "eve");
        let access = s.str("access_token");
        let query = |base: &str| {
            crate::common::post(
                base,
                "/liveuser/User/QueryUser",
                json!({"uids": []}),
                Some(&access),
            )
        };
        assert_eq!(query(&a.base).status, 200);
        cli(&write_config(dir.path()), &["session", "revoke", "--all"]).ok();
        let since = Instant::now();
        for base in [&a.base, &b.base] {
            while query(base).status != 401 {
                assert!(
                    since.elapsed() < Duration::from_secs(1),
                    "{base} still accepts it"
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(
            !a.log().contains("corrupt") && !b.log().contains("ERROR"),
            "{}",
            a.log()
        );
    });
}

/// A database of the test's own on the PostgreSQL server, owned by `owner`, dropped at
/// the end of the test.
struct Database {
    name: String,
    server: String,
}

impl Database {
    fn create(owner: &Role) -> Database {
        let server = postgres_server().unwrap();
        let name = format!("lu_db_{:08x}", rand::random::<u32>());
        Conn::open(&server)
            .exec(&format!("CREATE DATABASE {name} OWNER {}", owner.name))
            .unwrap();
        Database { name, server }
    }

    /// `url` pointing at this database instead.
    fn url(&self, url: &str) -> String {
        let (head, query) = url
            .split_once('?')
            .map_or((url, None), |(h, q)| (h, Some(q)));
        let base = head.rsplit_once('/').unwrap().0;
        match query {
            Some(query) => format!("{base}/{}?{query}", self.name),
            None => format!("{base}/{}", self.name),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Conn::open(&self.server).exec(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

#[test]
fn a_role_that_may_not_notify_is_refused_at_start_saying_why() {
    on_postgres(|| {
        let owner = Role::create("");
        let database = Database::create(&owner);
        // A hardened database: pg_notify is not for everyone.
        Conn::open(&database.url(&postgres_server().unwrap()))
            .exec("REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
            .unwrap();
        let url = database.url(&owner.url("public"));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("liveuser.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nbackend = \"postgres\"\n\
                 postgres_url = \"{url}\"\n[wx]\nmode = \"mock\"\n"
            ),
        )
        .unwrap();
        cli(&config, &["migrate"]).ok();
        let refused = cli_within(&config, &["serve"], Duration::from_secs(20)).unwrap();
        let line = refused.failed();
        assert!(
            line.contains("cannot send notifications") && line.contains("pg_notify"),
            "{line}"
        );
    });
}

// ----- finding 4: revocations made in SQL -----

#[test]
fn a_session_revoked_shortened_deleted_or_truncated_in_sql_is_refused_everywhere_within_a_second() {
    on_postgres(|| {
        let a = TestApp::spawn();
        let b = beside(&a, |_| {});
        let admin = admin_of(&a);
        let mut delays = Vec::new();
        let edits = [
            "UPDATE sessions SET revoked = true WHERE sid = {sid}",
            "UPDATE sessions SET expires_at = created_at, idle_expires_at = created_at \
             WHERE sid = {sid}",
            "DELETE FROM sessions WHERE sid = {sid}",
            "TRUNCATE sessions",
        ];
        for (i, edit) in edits.iter().enumerate() {
            for round in 0..3 {
                let s = a.login_ok(&format!("fay-{i}-{round}"));
                let token = s.str("access_token");
                for app in [&a, &b] {
                    assert_eq!(app.query(&token, &[]).status, 200, "cached now");
                }
                admin
                    .exec(&edit.replace("{sid}", &sid_sql(&token)))
                    .unwrap();
                let since = Instant::now();
                delays.push(until_refused(
                    &[&a, &b],
                    &token,
                    since,
                    Duration::from_secs(1),
                ));
            }
        }
        delays.sort();
        eprintln!(
            "SQL edit to refusal on both instances, {} edits: median {:.1} ms, worst {:.1} ms",
            delays.len(),
            delays[delays.len() / 2].as_secs_f64() * 1000.0,
            delays[delays.len() - 1].as_secs_f64() * 1000.0
        );
    });
}

#[test]
fn renewals_notify_nothing_and_a_revocation_notifies_its_session_once() {
    on_postgres(|| {
        let a = TestApp::spawn_with(|c| c.token.reuse_grace_secs = 0);
        let b = beside(&a, |c| c.token.rotation = false);
        let admin = admin_of(&a);
        let channel = channel(&admin);
        let listener = admin_of(&a);
        listener.exec(&format!("LISTEN \"{channel}\"")).unwrap();
        let mut rotated = a.login_ok("gil").str("refresh_token");
        let touched = b.login_ok("gil2").str("refresh_token");
        for _ in 0..10 {
            rotated = a.renew(&rotated).str("refresh_token");
            assert_eq!(b.renew(&touched).status, 200);
        }
        assert_eq!(listener.heard(), vec![], "a renewal notified");
        let s = a.login_ok("hal");
        let t0 = s.str("refresh_token");
        assert_eq!(a.renew(&t0).status, 200);
        a.renew(&t0).assert_error(401, "unauthenticated");
        let sid = jwt_claims(&s.str("access_token"))["sid"]
            .as_str()
            .unwrap()
            .to_string();
        thread::sleep(Duration::from_millis(200));
        assert_eq!(listener.heard(), vec![(channel, format!("s{sid}"))]);
    });
}

// ----- finding 5: one clock for the grace -----

#[test]
fn an_instance_60_s_behind_takes_a_retired_token_past_the_grace_for_reuse() {
    on_postgres(|| {
        let a = TestApp::spawn_with(|c| c.token.reuse_grace_secs = 2);
        let b = beside(&a, |c| c.token.reuse_grace_secs = 2);
        b.advance(-60);
        let s = a.login_ok("ivy");
        let t0 = s.str("refresh_token");
        let first = a.renew(&t0);
        assert_eq!(first.status, 200, "{}", first.text);
        let t1 = first.str("refresh_token");
        // At once: a retry, on either instance.
        let retry = b.renew(&t0);
        assert_eq!(retry.status, 200, "{}", retry.text);
        assert_eq!(retry.str("refresh_token"), t1);
        // Past the grace by the database's clock; by B's own clock a minute before.
        thread::sleep(Duration::from_millis(2500));
        b.renew(&t0).assert_error(401, "unauthenticated");
        a.renew(&t1).assert_error(401, "unauthenticated");
        a.query(&s.str("access_token"), &[])
            .assert_error(401, "unauthenticated");
    });
}

#[test]
fn an_instance_60_s_ahead_still_answers_a_retry_within_the_grace() {
    on_postgres(|| {
        let a = TestApp::spawn();
        let c = beside(&a, |_| {});
        c.advance(60);
        let t0 = a.login_ok("jo").str("refresh_token");
        let t1 = a.renew(&t0).str("refresh_token");
        let retry = c.renew(&t0);
        assert_eq!(retry.status, 200, "{}", retry.text);
        assert_eq!(retry.str("refresh_token"), t1);
        assert_eq!(a.renew(&t1).status, 200, "the retry revoked nothing");
    });
}

// ----- also pinned: statements take text as parameters; URLs keep their password -----

#[test]
fn text_with_sql_syntax_in_every_field_a_client_controls_is_stored_as_it_is() {
    on_postgres(|| {
        let app = TestApp::spawn_wechat(|_| {});
        let hostile = "x'); DROP TABLE users; -- $1 \\' \" ;";
        let s = app.login_ok(&format!("ok-{hostile}"));
        let (token, uid) = (s.str("access_token"), s.str("uid"));
        let fields = json!({
            "name": "'; DELETE FROM sessions; --",
            "agent": "$1 $$ \\x00 ' \"",
            "avatar": "https://example.com/a'||pg_sleep(3)||'.png",
        });
        assert_eq!(app.add_user(&token, fields.clone()).status, 200);
        let read = app.query(&token, &[&uid]);
        assert_eq!(read.status, 200, "{}", read.text);
        for field in ["name", "agent", "avatar"] {
            assert_eq!(read.body["users"][0][field], fields[field]);
        }
        let admin = admin_of(&app);
        assert_eq!(
            admin.value(&format!(
                "SELECT count(*) FROM identities WHERE openid = $q$openid-{hostile}$q$ \
                 AND unionid = $q$union-{hostile}$q$"
            )),
            "1"
        );
        assert_eq!(admin.value("SELECT count(*) FROM sessions"), "1");
        assert_eq!(app.login_ok(&format!("ok-{hostile}")).str("uid"), uid);
    });
}

/// Malformed `storage.postgres_url`s holding a password: each start is refused naming
/// the key, and the password shows nowhere. (No PostgreSQL needed.)
#[test]
fn a_malformed_or_unreachable_postgres_url_is_refused_without_showing_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let secret = "hunter2secret";
    let urls = [
        format!("postgres://lu:{secret}@db/x?port=notaport"),
        format!("postgres://lu:{secret}@db:99999/x"),
        format!("postgres://lu:{secret}%zz@db/x"),
        format!("postgres://lu:{secret}@[::1/x"),
        format!("postgres://lu:{secret}@db/x?sslmode=verify-ca"),
        format!("postgres://lu:{secret}@db/x?sslmode={secret}"),
        format!("postgres://lu:{secret}@db/x?options={secret}&bogus={secret}"),
        format!("mysql://lu:{secret}@db/x"),
        format!("postgres://:{secret}@db/x"),
        format!("postgres://lu:{secret}@127.0.0.1:{closed_port}/x?sslmode=disable"),
    ];
    for url in &urls {
        let config = dir.path().join("liveuser.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nbackend = \"postgres\"\n\
                 postgres_url = \"{url}\"\n[wx]\nmode = \"mock\"\n"
            ),
        )
        .unwrap();
        for command in [&["serve"][..], &["migrate"], &["user", "list"]] {
            let run = cli_within(&config, command, Duration::from_secs(20))
                .unwrap_or_else(|| panic!("{command:?} with {url} did not finish"));
            assert_eq!(run.code, 1, "{command:?} with {url}: {run:?}");
            let said = format!("{}{}", run.stdout, run.stderr);
            assert!(
                !said.contains(secret),
                "{command:?} with {url} said: {said}"
            );
            assert!(
                said.contains("postgres") || said.contains("database"),
                "{command:?} with {url} said: {said}"
            );
        }
    }
}
