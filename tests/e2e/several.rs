//! Several instances on one PostgreSQL database, for real: the `liveuser` executable
//! started N times on one schema, a database restarted under load (a throwaway cluster
//! of the test's own, never the shared server), and the move from sled by export and
//! import. Every test here runs only with `LIVEUSER_TEST_POSTGRES_URL` set.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Binary, Reply, agent, binary_config, cli, login, on_postgres, post, postgres_server, psql,
    renew, schema_url, send,
};

/// Says a measured figure on the terminal (past the harness's output capture).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn query(base: &str, token: &str, uids: &[&str]) -> Reply {
    post(
        base,
        "/liveuser/User/QueryUser",
        json!({ "uids": uids }),
        Some(token),
    )
}

fn add_user(base: &str, token: &str, user: Value) -> Reply {
    post(
        base,
        "/liveuser/User/AddUser",
        json!({ "user": user }),
        Some(token),
    )
}

/// `n` instances of the executable on the schema of `dir`, with `extra` appended to the
/// configuration.
fn instances(dir: &std::path::Path, n: usize, extra: &str) -> Vec<Binary> {
    let config = format!("{}{extra}", binary_config(dir));
    (0..n).map(|_| Binary::serve(dir, &config, &[])).collect()
}

/// A request that may meet a dead or unreachable server: `None` when no answer came.
fn try_post(base: &str, path: &str, body: &Value, bearer: Option<&str>) -> Option<Reply> {
    let mut request = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(body.to_string().into_bytes()).unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let mut response = agent.run(request).ok()?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Some(Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        headers: Default::default(),
    })
}

#[test]
fn three_instances_share_logins_writes_and_reads() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = <[Binary; 3]>::try_from(instances(dir.path(), 3, ""))
            .ok()
            .unwrap();
        // Log in on A, write on B, read on C.
        let alice = login(&a.base, "alice");
        let token = alice.str("access_token");
        let uid = alice.str("uid");
        let written = add_user(&b.base, &token, json!({"name": "Alice", "agent": "B"}));
        assert_eq!(written.status, 200, "{}", written.text);
        let read = query(&c.base, &token, &[&uid]);
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.body["users"][0]["name"], "Alice");
        // A write on C replaces what A and B have cached.
        for base in [&a.base, &b.base] {
            assert_eq!(query(base, &token, &[&uid]).body["users"][0]["agent"], "B");
        }
        let again = add_user(&c.base, &token, json!({"agent": "C"}));
        assert_eq!(again.status, 200, "{}", again.text);
        let deadline = Instant::now() + Duration::from_secs(1);
        for base in [&a.base, &b.base] {
            while query(base, &token, &[&uid]).body["users"][0]["agent"] != "C" {
                assert!(
                    Instant::now() < deadline,
                    "a cached record outlived a write"
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        // The same user logging in on B is the same user; the refresh token of A renews on C.
        assert_eq!(login(&b.base, "alice").str("uid"), uid);
        let renewed = renew(&c.base, &alice.str("refresh_token"));
        assert_eq!(renewed.status, 200, "{}", renewed.text);
        // Every instance signs with the same key: C's token works on A.
        let q = query(&a.base, &renewed.str("access_token"), &[&uid]);
        assert_eq!(q.status, 200, "{}", q.text);
        let health = send(&agent(), "GET", &format!("{}/healthz", a.base), &[], b"");
        assert_eq!(health.text, r#"{"status":"ok","database":"up"}"#);
    });
}

#[test]
fn fifty_concurrent_renewals_over_three_instances_yield_exactly_one_successor() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let servers = instances(dir.path(), 3, "");
        let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
        let first = login(&bases[0], "bob");
        let token = first.str("refresh_token");
        let start = Arc::new(std::sync::Barrier::new(50));
        let answers: Vec<Reply> = (0..50)
            .map(|i| {
                let base = bases[i % 3].clone();
                let token = token.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    renew(&base, &token)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for a in &answers {
            assert_eq!(
                a.status, 200,
                "every concurrent renewal is answered: {}",
                a.text
            );
        }
        let successors: std::collections::HashSet<String> =
            answers.iter().map(|a| a.str("refresh_token")).collect();
        assert_eq!(successors.len(), 1, "exactly one successor: {successors:?}");
        let successor = successors.into_iter().next().unwrap();
        assert_ne!(successor, token);
        // The one successor is the session's current token: it renews on any instance.
        let next = renew(&bases[2], &successor);
        assert_eq!(next.status, 200, "{}", next.text);
    });
}

/// Polls `bases` with `token` until each refuses it; returns the slowest delay.
fn until_refused(bases: &[&str], token: &str, since: Instant) -> Duration {
    let mut slowest = Duration::ZERO;
    for base in bases {
        loop {
            let r = query(base, token, &[]);
            if r.status == 401 {
                break;
            }
            assert_eq!(r.status, 200, "{}", r.text);
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "{base} still accepts a revoked session's token"
            );
            thread::sleep(Duration::from_millis(1));
        }
        slowest = slowest.max(since.elapsed());
    }
    slowest
}

#[test]
fn a_revocation_through_one_instance_is_in_force_on_the_others_within_a_second() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        // No grace: presenting a rotated token again is reuse, which revokes the session.
        let [a, b, c] =
            <[Binary; 3]>::try_from(instances(dir.path(), 3, "[token]\nreuse_grace_secs = 0\n"))
                .ok()
                .unwrap();
        let config = dir.path().join("liveuser.toml");
        let mut delays = Vec::new();
        for round in 0..5 {
            // Reuse detected by A revokes the session on B and C, whose caches hold it.
            let s = login(&a.base, &format!("carol#{round}"));
            let token = s.str("access_token");
            for base in [&b.base, &c.base] {
                assert_eq!(query(base, &token, &[]).status, 200);
            }
            let old = s.str("refresh_token");
            assert_eq!(renew(&a.base, &old).status, 200);
            let refused = renew(&a.base, &old);
            let since = Instant::now();
            refused.assert_error(401, "unauthenticated");
            delays.push((
                "reuse on A",
                until_refused(&[&b.base, &c.base], &token, since),
            ));

            // `session revoke --uid` from the CLI, with all three instances running.
            let s = login(&b.base, &format!("dave#{round}"));
            let token = s.str("access_token");
            for base in [&a.base, &b.base, &c.base] {
                assert_eq!(query(base, &token, &[]).status, 200);
            }
            let uid = s.str("uid");
            let revoked = cli(&config, &["session", "revoke", "--uid", &uid]);
            let since = Instant::now();
            revoked.ok();
            delays.push((
                "CLI revoke",
                until_refused(&[&a.base, &b.base, &c.base], &token, since),
            ));
        }
        let worst = delays.iter().map(|d| d.1).max().unwrap();
        let mut sorted: Vec<Duration> = delays.iter().map(|d| d.1).collect();
        sorted.sort();
        report(&format!(
            "revocation delay across instances over {} revocations: median {:.1} ms, worst {:.1} ms",
            delays.len(),
            sorted[sorted.len() / 2].as_secs_f64() * 1000.0,
            worst.as_secs_f64() * 1000.0
        ));
        assert!(worst <= Duration::from_secs(1), "{delays:?}");
    });
}

/// What a writer thread got acknowledged: per user, the highest number answered 200.
type Acked = Arc<Mutex<Vec<(String, String, u64)>>>;

/// Writers that keep writing increasing numbers into their own user's `agent`, spread
/// over `bases`, until `stop`; returns per writer (uid, token, last acknowledged number).
fn writers(
    bases: Vec<String>,
    tokens: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    unavailable: Arc<AtomicU64>,
) -> (Vec<thread::JoinHandle<()>>, Acked) {
    let acked: Acked = Arc::new(Mutex::new(
        tokens
            .iter()
            .map(|(u, t)| (u.clone(), t.clone(), 0))
            .collect(),
    ));
    let handles = tokens
        .into_iter()
        .enumerate()
        .map(|(w, (_, token))| {
            let bases = bases.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            let unavailable = unavailable.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    n += 1;
                    let base = &bases[(n as usize + w) % bases.len()];
                    let body = json!({"user": {"agent": format!("{n}")}});
                    match try_post(base, "/liveuser/User/AddUser", &body, Some(&token)) {
                        Some(r) if r.status == 200 => acked.lock().unwrap()[w].2 = n,
                        Some(r) if r.status == 503 => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(r.code(), "unavailable", "{}", r.text);
                            thread::sleep(Duration::from_millis(20));
                        }
                        Some(r) => panic!("unexpected answer {}: {}", r.status, r.text),
                        None => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    (handles, acked)
}

/// Checks through `base` that every acknowledged number is stored (a later one may be:
/// a write can commit without its answer arriving).
fn assert_acked_kept(base: &str, acked: &Acked) {
    for (uid, token, n) in acked.lock().unwrap().iter() {
        let r = query(base, token, &[uid]);
        assert_eq!(r.status, 200, "{}", r.text);
        let stored: u64 = r.body["users"][0]["agent"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap();
        assert!(stored >= *n, "{uid}: acknowledged {n}, stored {stored}");
    }
}

#[test]
fn an_instance_killed_under_load_loses_no_acknowledged_write_and_the_others_keep_serving() {
    on_postgres(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = instances(dir.path(), 3, "");
        let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
        let tokens: Vec<(String, String)> = (0..6)
            .map(|i| {
                let r = login(&bases[i % 3], &format!("writer-{i}"));
                (r.str("uid"), r.str("access_token"))
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let unavailable = Arc::new(AtomicU64::new(0));
        let (handles, acked) = writers(bases.clone(), tokens, stop.clone(), unavailable.clone());
        thread::sleep(Duration::from_millis(700));
        servers[0].kill9();
        let killed_at = Instant::now();
        let before: u64 = acked.lock().unwrap().iter().map(|a| a.2).sum();
        thread::sleep(Duration::from_millis(700));
        let after: u64 = acked.lock().unwrap().iter().map(|a| a.2).sum();
        assert!(after > before, "the other instances keep serving");
        stop.store(true, Ordering::SeqCst);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            unavailable.load(Ordering::SeqCst),
            0,
            "nothing was unavailable"
        );
        assert!(killed_at.elapsed() < Duration::from_secs(30));
        assert_acked_kept(&bases[1], &acked);
        assert_acked_kept(&bases[2], &acked);
    });
}

/// A PostgreSQL cluster of the test's own: initdb in a temp dir owned by the `postgres`
/// user, started on a free port; stopped and removed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(args: &[&str]) -> std::process::Output {
    std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser runs")
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "chown to the postgres user (tests run as root)"
        );
        let data = dir.path().join("data");
        let init = as_postgres(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster { dir, port };
        cluster.pg_ctl("start");
        cluster
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let mut args = vec![
            format!("{PG_BIN}/pg_ctl"),
            "-D".into(),
            data.display().to_string(),
            "-l".into(),
            log.display().to_string(),
            "-o".into(),
            options,
            "-w".into(),
        ];
        if action == "stop" {
            args.extend(["-m".into(), "fast".into()]);
        }
        args.push(action.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = as_postgres(&refs);
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
    }
}

#[test]
fn a_database_restart_under_load_answers_503_then_recovers_and_loses_nothing_acknowledged() {
    on_postgres(|| {
        let cluster = Cluster::start();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nbackend = \"postgres\"\n\
             postgres_url = \"{}\"\npostgres_pool_size = 4\n[wx]\nmode = \"mock\"\n",
            cluster.url()
        );
        let mut servers: Vec<Binary> = (0..2)
            .map(|_| Binary::serve(dir.path(), &config, &[]))
            .collect();
        let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
        let tokens: Vec<(String, String)> = (0..4)
            .map(|i| {
                let r = login(&bases[i % 2], &format!("w{i}"));
                (r.str("uid"), r.str("access_token"))
            })
            .collect();
        let refresh = login(&bases[0], "renewer").str("refresh_token");
        let stop = Arc::new(AtomicBool::new(false));
        let unavailable = Arc::new(AtomicU64::new(0));
        let (handles, acked) = writers(bases.clone(), tokens, stop.clone(), unavailable.clone());
        thread::sleep(Duration::from_millis(500));

        cluster.pg_ctl("stop");
        let down = Instant::now();
        // While it is down: calls answer 503 (a write in flight may fail either way),
        // healthz says so, and no instance dies.
        thread::sleep(Duration::from_millis(1500));
        let r = renew(&bases[1], &refresh);
        r.assert_error(503, "unavailable");
        let health = send(&agent(), "GET", &format!("{}/healthz", bases[0]), &[], b"");
        assert_eq!(health.status, 503, "{}", health.text);
        assert_eq!(health.body["database"], "down");
        let down_503s = unavailable.load(Ordering::SeqCst);
        assert!(
            down_503s > 0,
            "writes were refused with 503 while the database was down"
        );

        cluster.pg_ctl("start");
        let back = Instant::now();
        // Recovery without a restart: each instance serves again, healthz says up.
        for base in &bases {
            loop {
                let health = send(&agent(), "GET", &format!("{base}/healthz"), &[], b"");
                if health.status == 200 {
                    break;
                }
                assert!(
                    back.elapsed() < Duration::from_secs(15),
                    "{base} did not recover"
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        let renewed = renew(&bases[1], &refresh);
        assert_eq!(renewed.status, 200, "{}", renewed.text);
        let acked_before: u64 = acked.lock().unwrap().iter().map(|a| a.2).sum();
        thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::SeqCst);
        for h in handles {
            h.join().unwrap();
        }
        let acked_after: u64 = acked.lock().unwrap().iter().map(|a| a.2).sum();
        assert!(acked_after > acked_before, "writes succeed again");
        for server in &mut servers {
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "no instance exited:\n{}",
                server.log()
            );
        }
        assert_acked_kept(&bases[0], &acked);
        report(&format!(
            "database restart: down {:.1} s, {} writes answered 503 meanwhile, all instances serving {:.2} s after it was back",
            (back - down).as_secs_f64(),
            down_503s,
            back.elapsed().as_secs_f64()
        ));
    });
}

#[test]
fn a_sled_database_moves_to_postgres_by_export_and_import_and_refresh_tokens_keep_working() {
    // The sled side is a plain sled test directory; the PostgreSQL side a fresh schema.
    on_postgres(|| {
        let sled_dir = tempfile::tempdir().unwrap();
        let sled_config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[wx]\nmode = \"mock\"\n",
            sled_dir.path().join("db").display()
        );
        let mut sled = Binary::serve(sled_dir.path(), &sled_config, &[]);
        let erin = login(&sled.base, "erin");
        let rotated = renew(&sled.base, &erin.str("refresh_token"));
        assert_eq!(rotated.status, 200);
        let live = rotated.str("refresh_token");
        let retired = erin.str("refresh_token");
        let written = add_user(
            &sled.base,
            &erin.str("access_token"),
            json!({"name": "Erin"}),
        );
        assert_eq!(written.status, 200);
        let frank = login(&sled.base, "frank").str("refresh_token");
        sled.terminate();
        let export = sled_dir.path().join("export.jsonl");
        cli(
            &sled_dir.path().join("liveuser.toml"),
            &["export", "--sessions", "--out", export.to_str().unwrap()],
        )
        .ok();

        let pg_dir = tempfile::tempdir().unwrap();
        let pg_config = pg_dir.path().join("liveuser.toml");
        std::fs::write(&pg_config, binary_config(pg_dir.path())).unwrap();
        let imported = cli(&pg_config, &["import", export.to_str().unwrap()]);
        imported.ok();
        let [a, b] = <[Binary; 2]>::try_from(instances(pg_dir.path(), 2, ""))
            .ok()
            .unwrap();
        // The live refresh tokens renew on any instance; the user is the same.
        let renewed = renew(&a.base, &live);
        assert_eq!(renewed.status, 200, "{}", renewed.text);
        assert_eq!(renewed.str("uid"), erin.str("uid"));
        assert_eq!(renew(&b.base, &frank).status, 200);
        let q = query(&b.base, &renewed.str("access_token"), &[&erin.str("uid")]);
        assert_eq!(q.body["users"][0]["name"], "Erin");
        // Logging in again finds the imported identity: same uid.
        assert_eq!(login(&b.base, "erin").str("uid"), erin.str("uid"));
        // A token rotated before the move is still recognised as reuse.
        renew(&a.base, &retired).assert_error(401, "unauthenticated");
    });
}

#[test]
fn instances_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    on_postgres(|| {
        let server = postgres_server().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config_text = binary_config(dir.path());
        let config = dir.path().join("liveuser.toml");
        std::fs::write(&config, &config_text).unwrap();
        let starters: Vec<_> = (0..3)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                let text = config_text.clone();
                thread::spawn(move || Binary::serve(&dir, &text, &[]))
            })
            .collect();
        let servers: Vec<Binary> = starters.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(servers.len(), 3);
        let migrate = cli(&config, &["migrate"]);
        let said = migrate.ok();
        assert!(said.contains("schema version 3 (was 3)"), "{said}");
        drop(servers);

        // The schema of this test, as the harness named it.
        let schema = config_text
            .split("search_path%3D")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();
        let url = schema_url(&server, &schema);
        psql(
            &url,
            "SELECT count(*) FROM liveuser_schema_migrations; \
             DO $$ BEGIN IF (SELECT count(*) FROM liveuser_schema_migrations) <> 3 THEN \
             RAISE EXCEPTION 'migrated more than once'; END IF; END $$;",
        )
        .unwrap();
        psql(
            &url,
            "INSERT INTO liveuser_schema_migrations (version, description) VALUES (99, 'from the future')",
        )
        .unwrap();
        let refused = cli(&config, &["migrate"]);
        let line = refused.failed();
        assert!(
            line.contains("version 99, newer than this liveuser"),
            "{line}"
        );
        let served = cli(&config, &["serve"]);
        assert_eq!(served.code, 1, "{served:?}");
        assert!(
            served.stderr.contains("newer than this liveuser"),
            "{served:?}"
        );
    });
}
