//! liveuser's load generator: seeds a database, starts a server on it, drives each
//! workload with N keep-alive connections for T seconds, and prints requests/s,
//! p50/p99/p999 latency and the ratio to `GET /healthz` of the same server in the same
//! run (so machine noise largely cancels), as a table and as JSON.
//!
//! ```text
//! cargo run --release --example loadgen                       # 100k users, every workload
//! cargo run --release --example loadgen -- --users 1000 --workloads healthz,renew --growth 1000000
//! cargo run --release --example loadgen -- --users 1000000 --workloads healthz,query
//! cargo run --release --example loadgen -- --help
//! # the same on PostgreSQL (a fresh schema, dropped at the end), beside pgbench
//! cargo run --release --example loadgen -- --backend postgres --workloads healthz,pgbench,query,renew
//! # ES256 against HS256: one server of each, their rounds interleaved
//! cargo run --release --example loadgen -- --users 10000 --algorithms ES256,HS256 \
//!     --workloads healthz,authcheck,query,adduser,renew,login
//! ```
//!
//! With `--algorithms ES256,HS256` each algorithm gets a database and a server of its
//! own (generated keys of that algorithm), every round runs every workload on each in
//! turn, and each ratio is taken against healthz of the same server in the same round;
//! a last table compares each workload's ES256 ratio with its HS256 ratio.
//!
//! With `--backend postgres` the server keeps its data in a schema of its own on the
//! server at `--postgres-url`, and the `pgbench` workload measures PostgreSQL itself in
//! the same rounds: `pgbench` with the same connections and threads running a one-UPDATE
//! script (a random row of a 100k-row table per transaction, each committed), the ceiling
//! of one durable single-row write on this machine for a durable RenewToken to be
//! compared with.
//!
//! The server runs in a child process (this executable re-run with a hidden `__serve`
//! argument, which calls the same `liveuser::app::start` as `liveuser serve`), so its
//! memory is measured on its own. Seeding logs every user in once through the service
//! itself (mock WeChat mode), so the database holds exactly what production would: a
//! user, an identity and a live session per user. Rate limits and the per-address
//! connection cap are turned off (all the load comes from one address).
//!
//! The client is a minimal HTTP/1.1 keep-alive client (one request in flight per
//! connection, like `wrk`), so it costs little of the machine the server shares.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::RngExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use liveuser::clock::SystemClock;
use liveuser::config::{Config, WxMode};
use liveuser::model::KeyAlgorithm;

/// Load generator for liveuser.
#[derive(Debug, Parser)]
struct Args {
    /// Users (each with one live session) to seed.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Keep-alive connections per workload.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up seconds before each workload.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Rounds: every workload runs this many times, interleaved; the table shows the
    /// median of the rounds, and each ratio is taken against healthz of its own round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Comma-separated workloads: healthz, authcheck (Auth/Check), query, adduser, renew,
    /// login (returning users), login-new (first logins), and with --backend postgres also
    /// pgbench (PostgreSQL alone, one UPDATE per transaction).
    #[arg(
        long,
        default_value = "healthz,authcheck,query,adduser,renew,login,login-new"
    )]
    workloads: String,
    /// Comma-separated algorithms of the servers' generated signing keys (ES256, HS256):
    /// one server each, rounds interleaved.
    #[arg(long, default_value = "ES256")]
    algorithms: String,
    /// Where to put the database (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// sled cache size of the server (storage.cache_capacity_bytes).
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Reuse the database already in --dir (seeded by an earlier run) instead of seeding:
    /// only the healthz and query workloads run, with a fresh login for each connection
    /// (for memory and start-up figures of a large database without seeding it again).
    #[arg(long)]
    reuse: bool,
    /// Renewal growth: after the rounds, renew the seeded sessions this many times in all
    /// (as fast as the connections go), then run the rounds of healthz and renew again,
    /// and report the database size and RenewToken's ratio before and after.
    #[arg(long)]
    growth: Option<u64>,
    /// Storage of the server: `sled` (a directory) or `postgres` (a fresh schema on
    /// --postgres-url, dropped at the end).
    #[arg(long, default_value = "sled")]
    backend: String,
    /// The PostgreSQL server for --backend postgres.
    #[arg(
        long,
        env = "LIVEUSER_TEST_POSTGRES_URL",
        default_value = "postgres://root@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Connections the server keeps to PostgreSQL (storage.postgres_pool_size).
    #[arg(long, default_value_t = 16)]
    pool: usize,
    /// Internal: run the server with this config file.
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
}

/// One seeded user's credentials.
#[derive(Clone)]
struct Seeded {
    uid: String,
    access: String,
    /// The latest refresh token: the renew workload rotates it and leaves the successor
    /// here for the next round (presenting a rotated one would be reuse).
    refresh: Arc<std::sync::Mutex<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Healthz,
    AuthCheck,
    Query,
    AddUser,
    Renew,
    Login,
    LoginNew,
    Pgbench,
}

impl Workload {
    fn parse(s: &str) -> Option<Workload> {
        Some(match s.trim() {
            "healthz" => Workload::Healthz,
            "authcheck" => Workload::AuthCheck,
            "query" => Workload::Query,
            "adduser" => Workload::AddUser,
            "renew" => Workload::Renew,
            "login" => Workload::Login,
            "login-new" => Workload::LoginNew,
            "pgbench" => Workload::Pgbench,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Healthz => "healthz",
            Workload::AuthCheck => "authcheck",
            Workload::Query => "query",
            Workload::AddUser => "adduser",
            Workload::Renew => "renew",
            Workload::Login => "login",
            Workload::LoginNew => "login-new",
            Workload::Pgbench => "pgbench",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Workload::Healthz => "GET /healthz (baseline)",
            Workload::AuthCheck => "GET /liveuser/Auth/Check, valid token",
            Workload::Query => "QueryUser, 10 random uids, valid token",
            Workload::AddUser => "AddUser, own record, durable",
            Workload::Renew => "RenewToken with rotation, durable",
            Workload::Login => "Login of a returning user, mock mode, durable",
            Workload::LoginNew => "Login of a new user, mock mode, durable",
            Workload::Pgbench => "pgbench: one UPDATE per transaction (PostgreSQL alone)",
        }
    }

    /// The ratio to healthz the performance issue asks for.
    fn target_ratio(self) -> Option<f64> {
        match self {
            Workload::Healthz => None,
            Workload::AuthCheck => Some(0.70),
            Workload::Query => Some(0.60),
            Workload::AddUser => Some(0.40),
            Workload::Renew => Some(0.30),
            Workload::Login => Some(0.20),
            Workload::LoginNew => Some(0.15),
            Workload::Pgbench => None,
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some(config) = &args.serve {
        liveuser::app::tune_allocator();
        serve(config);
        return;
    }
    let workloads: Vec<Workload> = args
        .workloads
        .split(',')
        .map(|w| Workload::parse(w).unwrap_or_else(|| panic!("unknown workload {w:?}")))
        .collect();

    let temp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("bench dir");
    let config_path = dir.join("liveuser.toml");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.storage.path = dir.join("db");
    if let Some(bytes) = args.cache_bytes {
        config.storage.cache_capacity_bytes = bytes;
    }
    let schema = match args.backend.as_str() {
        "sled" => None,
        "postgres" => {
            // The server's pool and pgbench's connections are open at once.
            let max: usize = psql_value(&args.postgres_url, "SHOW max_connections")
                .parse()
                .expect("PostgreSQL's max_connections");
            let needed = args.pool + args.connections + 2;
            assert!(
                !workloads.contains(&Workload::Pgbench) || needed <= max,
                "--pool {} and pgbench's {} connections need {needed} of PostgreSQL's \
                 max_connections = {max}: lower --pool",
                args.pool,
                args.connections
            );
            let schema = BenchSchema::create(&args.postgres_url);
            let sep = if args.postgres_url.contains('?') {
                '&'
            } else {
                '?'
            };
            config.storage.backend = liveuser::config::StorageBackend::Postgres;
            config.storage.postgres_url = liveuser::secret::Secret::new(format!(
                "{}{sep}options=-csearch_path%3D{}",
                args.postgres_url, schema.name
            ));
            config.storage.postgres_pool_size = args.pool;
            Some(schema)
        }
        other => panic!("unknown backend {other:?}: sled or postgres"),
    };
    assert!(
        schema.is_some() || !workloads.contains(&Workload::Pgbench),
        "the pgbench workload needs --backend postgres"
    );
    config.wx.mode = WxMode::Mock;
    config.limits.login_per_min = 0;
    config.limits.renew_per_min = 0;
    // All the load comes from one address (and /metrics is scraped beside it).
    config.server.max_connections_per_address = 0;
    config.log.level = "warn".into();
    let algorithms: Vec<KeyAlgorithm> = args
        .algorithms
        .split(',')
        .map(|a| KeyAlgorithm::parse(a.trim()).unwrap_or_else(|| panic!("unknown algorithm {a:?}")))
        .collect();
    assert!(
        algorithms.len() == 1 || (schema.is_none() && !args.reuse && args.growth.is_none()),
        "several --algorithms run on sled, without --reuse or --growth"
    );

    if args.reuse {
        assert!(
            workloads
                .iter()
                .all(|w| matches!(w, Workload::Healthz | Workload::Query)),
            "--reuse runs only healthz and query"
        );
    }
    let mut targets = Vec::new();
    for &algorithm in &algorithms {
        let mut config = config.clone();
        let mut config_path = config_path.clone();
        config.token.algorithm = algorithm;
        if algorithms.len() > 1 {
            let own = dir.join(algorithm.name());
            std::fs::create_dir_all(&own).expect("bench dir");
            config.storage.path = own.join("db");
            config_path = own.join("liveuser.toml");
        }
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).expect("write config");
        eprintln!(
            "seeding {} users into {} ({}) …",
            args.users,
            config.storage.path.display(),
            algorithm.name()
        );
        let started = Instant::now();
        let users = if args.reuse {
            reuse(&config, args.connections)
        } else {
            seed(&config, args.users)
        };
        let seed_secs = started.elapsed().as_secs_f64();
        eprintln!(
            "seeded in {seed_secs:.1} s ({:.0} logins/s)",
            args.users as f64 / seed_secs
        );
        let (server, addr, startup) = start_server(&config_path);
        let server = ServerChild(server);
        eprintln!(
            "server pid {} on {addr}, healthy {:.0} ms after start",
            server.0.id(),
            startup.as_secs_f64() * 1000.0
        );
        targets.push(Target {
            algorithm,
            addr,
            users: Arc::new(users),
            server,
            config,
            startup,
            seed_secs,
        });
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .unwrap();
    if let Some(BenchSchema { name: schema, .. }) = &schema
        && workloads.contains(&Workload::Pgbench)
    {
        psql(
            &args.postgres_url,
            &format!(
                "CREATE TABLE {schema}.pgbench_one (id integer PRIMARY KEY, n bigint NOT NULL);
                 INSERT INTO {schema}.pgbench_one SELECT g, 0 FROM generate_series(1, 100000) g;"
            ),
        );
        // VACUUM cannot run in the transaction psql makes of several statements.
        psql(
            &args.postgres_url,
            &format!("VACUUM ANALYZE {schema}.pgbench_one"),
        );
    }
    let mut results = Vec::new();
    for round in 0..args.rounds {
        for target in &targets {
            for &workload in &workloads {
                eprintln!(
                    "round {}: running {} ({}) for {:.0}+{:.0} s …",
                    round + 1,
                    workload.name(),
                    target.algorithm.name(),
                    args.warmup,
                    args.duration
                );
                let mut result = match (workload, &schema) {
                    (Workload::Pgbench, Some(schema)) => pgbench(&args, &schema.name, round),
                    _ => runtime.block_on(run_workload(
                        target.addr,
                        workload,
                        &args,
                        target.users.clone(),
                        round,
                    )),
                };
                result.algorithm = target.algorithm;
                eprintln!(
                    "  {:.0} req/s, p99 {:.2} ms, {} errors",
                    result.rps, result.p99_ms, result.errors
                );
                results.push(result);
            }
        }
    }
    // The figures of the run's server, and the growth run, are the first server's.
    let (addr, users, config, startup, seed_secs) = {
        let first = &targets[0];
        (
            first.addr,
            first.users.clone(),
            first.config.clone(),
            first.startup,
            first.seed_secs,
        )
    };
    let growth = args.growth.map(|total| {
        let size_before = dir_size(&config.storage.path);
        eprintln!(
            "growth: {total} renewals of the seeded sessions; database {:.1} MB before …",
            size_before as f64 / 1e6
        );
        let (secs, errors) = renew_many(&runtime, addr, args.connections, users.clone(), total);
        let size_after = dir_size(&config.storage.path);
        eprintln!(
            "  {:.0} renewals/s, {errors} errors; database {:.1} MB after",
            total as f64 / secs,
            size_after as f64 / 1e6
        );
        let mut after = Vec::new();
        for round in 0..args.rounds {
            for workload in [Workload::Healthz, Workload::Renew] {
                eprintln!(
                    "after growth, round {}: running {} …",
                    round + 1,
                    workload.name()
                );
                after.push(runtime.block_on(run_workload(
                    addr,
                    workload,
                    &args,
                    users.clone(),
                    round,
                )));
            }
        }
        Growth {
            total,
            secs,
            errors,
            size_before,
            size_after,
            after,
        }
    });
    let (rss_mb, peak_mb) = memory_of(targets[0].server.0.id());
    for target in &mut targets {
        let _ = Command::new("kill")
            .args(["-TERM", &target.server.0.id().to_string()])
            .status();
        let _ = target.server.0.wait();
    }
    let db_mb = match &schema {
        None => dir_size(&config.storage.path) as f64 / 1e6,
        Some(BenchSchema { name: schema, .. }) => {
            let size = psql_value(
                &args.postgres_url,
                &format!(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = '{schema}' AND c.relname <> 'pgbench_one' AND c.relkind = 'r'"
                ),
            );
            size.parse::<f64>().unwrap_or(0.0) / 1e6
        }
    };

    report(
        &args,
        &results,
        growth.as_ref(),
        Server {
            seed_secs,
            startup,
            rss_mb,
            peak_mb,
            db_mb,
        },
    );
}

/// What the growth run measured.
struct Growth {
    total: u64,
    secs: f64,
    errors: u64,
    size_before: u64,
    size_after: u64,
    after: Vec<Outcome>,
}

/// Figures of the server process and its database.
struct Server {
    seed_secs: f64,
    startup: Duration,
    rss_mb: f64,
    peak_mb: f64,
    db_mb: f64,
}

/// The `__serve` mode: exactly what `liveuser serve` does with this configuration.
fn serve(config_path: &Path) {
    let text = std::fs::read_to_string(config_path).expect("config");
    // The environment applies, so LIVEUSER_* variables tune the server under test.
    let config = Config::from_parts("loadgen.toml", Some(&text), std::env::vars())
        .expect("config")
        .config;
    liveuser::logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let running = liveuser::app::start(&config, Arc::new(SystemClock))
            .await
            .expect("server starts");
        println!("{}", running.addr);
        let stop = running.stopper();
        tokio::spawn(async move {
            liveuser::app::termination_signal().await;
            let _ = stop.send(true);
        });
        running.wait().await;
    });
}

/// A runtime for the in-process work before the server starts.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The store of `config` and a service on it, as `liveuser serve` builds them.
async fn open_service(
    config: &Config,
) -> (
    Arc<liveuser::store::AnyStore>,
    liveuser::service::Service<liveuser::store::AnyStore>,
) {
    let store = Arc::new(
        liveuser::store::open(&config.storage)
            .await
            .expect("open store"),
    );
    let service =
        liveuser::service::Service::from_config(config, store.clone(), Arc::new(SystemClock))
            .await
            .expect("service");
    (store, service)
}

/// Logs `n` users in through the service, in-process, and returns their credentials.
fn seed(config: &Config, n: usize) -> Vec<Seeded> {
    runtime().block_on(async {
        let (_, service) = open_service(config).await;
        let service = Arc::new(service);
        let mut out: Vec<Option<Seeded>> = vec![None; n];
        let chunk = 512;
        for start in (0..n).step_by(chunk) {
            let tasks: Vec<_> = (start..(start + chunk).min(n))
                .map(|i| {
                    let service = service.clone();
                    tokio::spawn(async move {
                        let grant = service
                            .login(&format!("user-{i}"))
                            .await
                            .expect("seed login");
                        (i, grant)
                    })
                })
                .collect();
            for task in tasks {
                let (i, grant) = task.await.unwrap();
                out[i] = Some(Seeded {
                    uid: grant.uid.to_string(),
                    access: grant.access_token,
                    refresh: Arc::new(grant.refresh_token.into()),
                });
            }
            if start % 100_000 == 0 && start > 0 {
                eprintln!("  {start} …");
            }
        }
        drop(service);
        out.into_iter().map(Option::unwrap).collect()
    })
}

/// Credentials for an already seeded database: every uid, and a fresh login of the first
/// `logins` users (whose tokens the query workload uses, one per connection).
fn reuse(config: &Config, logins: usize) -> Vec<Seeded> {
    runtime().block_on(async {
        use liveuser::store::Store;
        let (store, service) = open_service(config).await;
        let mut users = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_users(after.as_ref(), 10_000)
                .await
                .expect("list users");
            let Some(last) = page.last() else { break };
            after = Some(last.uid.clone());
            users.extend(page.into_iter().map(|u| Seeded {
                uid: u.uid.to_string(),
                access: String::new(),
                refresh: Default::default(),
            }));
        }
        let mut logged = Vec::with_capacity(logins);
        for i in 0..logins {
            let grant = service.login(&format!("user-{i}")).await.expect("login");
            logged.push(Seeded {
                uid: grant.uid.to_string(),
                access: grant.access_token,
                refresh: Arc::new(grant.refresh_token.into()),
            });
        }
        users.splice(0..0, logged);
        users
    })
}

/// The server child, killed if the run ends before stopping it (a panic in a workload),
/// so that a failed run leaves no server holding its port and database connections.
struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the server child and waits until `/healthz` answers; returns the time that took.
fn start_server(config_path: &Path) -> (Child, SocketAddr, Duration) {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .arg(config_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let Ok(addr) = line.trim().parse::<SocketAddr>() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start");
    };
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return (child, addr, started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The benchmark's own schema on PostgreSQL, dropped when the run ends, however it ends.
struct BenchSchema {
    url: String,
    name: String,
}

impl BenchSchema {
    fn create(url: &str) -> Self {
        let name = format!("lu_bench_{}", std::process::id());
        psql(url, &format!("CREATE SCHEMA {name}"));
        BenchSchema {
            url: url.to_string(),
            name,
        }
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .args(["-q", "-d", &self.url, "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .status();
    }
}

/// Runs `sql` with psql on `url` (the benchmark's schema set-up).
fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .status()
        .expect("psql runs");
    assert!(status.success(), "psql failed: {sql}");
}

/// The single value `sql` returns.
fn psql_value(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-At", "-d", url, "-c", sql])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One round of pgbench with the same connections, threads, warm-up and duration as
/// the HTTP workloads: a random row of a 100k-row table updated per transaction.
fn pgbench(args: &Args, schema: &str, round: usize) -> Outcome {
    let script = std::env::temp_dir().join(format!("loadgen-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, 100000)\nUPDATE {schema}.pgbench_one SET n = n + 1 WHERE id = :id;\n"
        ),
    )
    .expect("pgbench script");
    let run = |secs: f64| {
        let out = Command::new("pgbench")
            .args([
                "-n",
                "-r",
                "-c",
                &args.connections.to_string(),
                "-j",
                &args.threads.to_string(),
                "-T",
                &format!("{}", secs.ceil().max(1.0) as u64),
                "-f",
                script.to_str().unwrap(),
                &args.postgres_url,
            ])
            .output()
            .expect("pgbench runs");
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if args.warmup > 0.0 {
        run(args.warmup);
    }
    let text = run(args.duration);
    let number = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| {
                l.split(['=', ' '])
                    .filter_map(|w| w.parse::<f64>().ok())
                    .next()
            })
            .unwrap_or(0.0)
    };
    let tps = number("tps");
    let requests = number("number of transactions actually processed");
    let failed = number("number of failed transactions");
    let latency = number("latency average");
    let _ = std::fs::remove_file(&script);
    Outcome {
        algorithm: KeyAlgorithm::ES256,
        workload: Workload::Pgbench,
        round,
        requests: requests as u64,
        errors: failed as u64,
        rps: tps,
        // pgbench reports the mean, not percentiles: shown as p50.
        p50_ms: latency,
        p99_ms: 0.0,
        p999_ms: 0.0,
        flushes: None,
    }
}

/// A server under test: its signing-key algorithm, address, seeded users and process.
struct Target {
    algorithm: KeyAlgorithm,
    addr: SocketAddr,
    users: Arc<Vec<Seeded>>,
    server: ServerChild,
    config: Config,
    startup: Duration,
    seed_secs: f64,
}

/// Figures of one workload.
struct Outcome {
    /// The algorithm of the server it ran on.
    algorithm: KeyAlgorithm,
    workload: Workload,
    round: usize,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Flushes in the measured window, and the writers they served (0 where the server
    /// does not report batch sizes).
    flushes: Option<(f64, f64)>,
}

async fn run_workload(
    addr: SocketAddr,
    workload: Workload,
    args: &Args,
    users: Arc<Vec<Seeded>>,
    round: usize,
) -> Outcome {
    let warm = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + measure;
    // Flushes are counted from the server's own metrics at the edges of the measured
    // window (scraped by a separate task, so no connection's timing includes it).
    let flushes = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = flush_counts(addr).await;
        tokio::time::sleep_until(end.into()).await;
        let after = flush_counts(addr).await;
        Some((after?.0 - before?.0, after?.1 - before?.1))
    });
    let stats = run_connections(
        addr,
        workload,
        args.connections,
        users,
        round,
        Window {
            measure_from,
            end,
            budget: None,
        },
    )
    .await;
    let mut latencies = stats.latencies_us;
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    let requests = latencies.len() as u64;
    Outcome {
        algorithm: KeyAlgorithm::ES256,
        workload,
        round,
        requests,
        errors: stats.errors,
        rps: requests as f64 / measure.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        flushes: flushes.await.unwrap_or(None),
    }
}

/// Runs `conns` connections of `workload` until `window` ends (or its budget is spent)
/// and gathers what they measured.
async fn run_connections(
    addr: SocketAddr,
    workload: Workload,
    conns: usize,
    users: Arc<Vec<Seeded>>,
    round: usize,
    window: Window,
) -> ConnStats {
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let users = users.clone();
            let window = window.clone();
            tokio::spawn(async move { drive(addr, workload, c, conns, users, round, window).await })
        })
        .collect();
    let mut all = ConnStats {
        latencies_us: Vec::new(),
        errors: 0,
    };
    for task in tasks {
        let stats = task.await.unwrap();
        all.errors += stats.errors;
        all.latencies_us.extend(stats.latencies_us);
    }
    all
}

/// The server's flush count and the sum of writers over those flushes, from `/metrics`
/// (the writer sum only where the server reports batch sizes; otherwise 0).
async fn flush_counts(addr: SocketAddr) -> Option<(f64, f64)> {
    let mut client = Client::connect(addr).await;
    let (status, body) = client
        .call(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8(body).ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    };
    Some((
        value("liveuser_storage_flush_duration_seconds_count")?,
        value("liveuser_storage_flush_batch_writers_sum").unwrap_or(0.0),
    ))
}

/// The growth run's middle part: `total` renewals of the seeded sessions, as fast as the
/// connections go; returns the seconds it took and the errors.
fn renew_many(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    conns: usize,
    users: Arc<Vec<Seeded>>,
    total: u64,
) -> (f64, u64) {
    let started = Instant::now();
    let budget = Arc::new(std::sync::atomic::AtomicI64::new(total as i64));
    let stats = runtime.block_on(run_connections(
        addr,
        Workload::Renew,
        conns,
        users,
        usize::MAX,
        Window {
            measure_from: started,
            end: started + Duration::from_secs(24 * 3600),
            budget: Some(budget),
        },
    ));
    (started.elapsed().as_secs_f64(), stats.errors)
}

struct ConnStats {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// When a run's latencies start counting, and when it stops: at `end`, or once
/// `budget` requests have been sent.
#[derive(Clone)]
struct Window {
    measure_from: Instant,
    end: Instant,
    budget: Option<Arc<std::sync::atomic::AtomicI64>>,
}

/// One keep-alive connection issuing requests back to back until the window ends.
async fn drive(
    addr: SocketAddr,
    workload: Workload,
    conn: usize,
    conns: usize,
    users: Arc<Vec<Seeded>>,
    round: usize,
    window: Window,
) -> ConnStats {
    let Window {
        measure_from,
        end,
        budget,
    } = window;
    let mut client = Client::connect(addr).await;
    let mut stats = ConnStats {
        latencies_us: Vec::with_capacity(1 << 16),
        errors: 0,
    };
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(conn as u64 + 1);
    // Distinguishes this run's first-login codes from an earlier run's on the same --dir.
    let run = std::process::id();
    // Renew and login walk this connection's own share of the users, so no two
    // connections ever present the same refresh token or code.
    let mine: Vec<usize> = (conn..users.len()).step_by(conns).collect();
    let mut refresh: Vec<String> = mine
        .iter()
        .map(|&i| users[i].refresh.lock().unwrap().clone())
        .collect();
    let mut cursor = 0usize;
    // QueryUser and AddUser requests are built before the run, so the client spends its
    // share of the machine sending, not composing JSON (the server is what is measured).
    let pool: Vec<Vec<u8>> = match workload {
        Workload::Query | Workload::AddUser | Workload::AuthCheck => (0..POOL)
            .map(|_| {
                let mut request = Vec::with_capacity(1024);
                if workload == Workload::AuthCheck {
                    let me = match &users[rng.random_range(0..users.len())] {
                        seeded if !seeded.access.is_empty() => seeded,
                        _ => &users[conn],
                    };
                    request.extend_from_slice(
                        format!(
                            "GET /liveuser/Auth/Check HTTP/1.1\r\nHost: bench\r\n\
                             Authorization: Bearer {}\r\n\r\n",
                            me.access
                        )
                        .as_bytes(),
                    );
                } else if workload == Workload::Query {
                    let me = match &users[rng.random_range(0..users.len())] {
                        seeded if !seeded.access.is_empty() => seeded,
                        _ => &users[conn],
                    };
                    let uids: Vec<&str> = (0..10)
                        .map(|_| users[rng.random_range(0..users.len())].uid.as_str())
                        .collect();
                    let body = json!({ "uids": uids });
                    post(
                        &mut request,
                        "/liveuser/User/QueryUser",
                        Some(&me.access),
                        &body,
                    );
                } else {
                    let me = &users[rng.random_range(0..users.len())];
                    let name = format!("name-{}", rng.random_range(0..1_000_000u32));
                    let body = json!({"user": {"name": name, "agent": "loadgen"}});
                    post(
                        &mut request,
                        "/liveuser/User/AddUser",
                        Some(&me.access),
                        &body,
                    );
                }
                request
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut request = Vec::with_capacity(2048);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(budget) = &budget
            && budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) <= 0
        {
            break;
        }
        request.clear();
        let mut slot = None;
        match workload {
            Workload::Healthz => {
                request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            }
            Workload::Query | Workload::AddUser | Workload::AuthCheck => {
                request.extend_from_slice(&pool[cursor % POOL]);
                cursor += 1;
            }
            Workload::Renew => {
                let k = cursor % mine.len();
                cursor += 1;
                slot = Some(k);
                let body = format!(r#"{{"refresh_token":"{}"}}"#, refresh[k]);
                post_raw(&mut request, "/liveuser/Wx/RenewToken", None, &body);
            }
            Workload::Pgbench => unreachable!("pgbench runs outside the HTTP client"),
            Workload::Login => {
                let i = mine[cursor % mine.len()];
                cursor += 1;
                // A fresh code for a returning user each time, as wx.login() gives (mock
                // mode ignores what follows '#').
                let body = format!(r#"{{"code":"user-{i}#{round}.{cursor}"}}"#);
                post_raw(&mut request, "/liveuser/Wx/Login", None, &body);
            }
            Workload::LoginNew => {
                cursor += 1;
                // A user never seen before: first login, new uid, identity and record.
                let body = format!(r#"{{"code":"new-{run}-{round}-{conn}-{cursor}"}}"#);
                post_raw(&mut request, "/liveuser/Wx/Login", None, &body);
            }
        }
        let sent = Instant::now();
        let Ok((status, body)) = client.call(&request).await else {
            stats.errors += 1;
            client = Client::connect(addr).await;
            continue;
        };
        let took = sent.elapsed();
        if status != 200 {
            stats.errors += 1;
        } else if let Some(k) = slot
            && let Some(next) = field(&body, "refresh_token")
        {
            refresh[k] = next;
        }
        if sent >= measure_from {
            stats
                .latencies_us
                .push(took.as_micros().min(u32::MAX as u128) as u32);
        }
    }
    if workload == Workload::Renew {
        for (k, &i) in mine.iter().enumerate() {
            *users[i].refresh.lock().unwrap() = std::mem::take(&mut refresh[k]);
        }
    }
    stats
}

/// Requests built ahead per connection for QueryUser and AddUser.
const POOL: usize = 1024;

fn post(out: &mut Vec<u8>, path: &str, bearer: Option<&str>, body: &Value) {
    post_raw(out, path, bearer, &body.to_string());
}

fn post_raw(out: &mut Vec<u8>, path: &str, bearer: Option<&str>, body: &str) {
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = bearer {
        let _ = write!(out, "Authorization: Bearer {token}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// A string field of a flat JSON answer, found by searching rather than parsing (the
/// client's cost is kept small; liveuser's answers have no escapes in these fields).
fn field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_string())
}

/// A minimal HTTP/1.1 keep-alive client.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    async fn call(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response
                .parse(&self.buf)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?
            {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                let status = response.code.unwrap_or(0);
                while self.buf.len() < head + length {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((status, self.buf[head..head + length].to_vec()));
            }
        }
    }
}

/// Resident and peak resident memory of a process, in MB.
fn memory_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn report(args: &Args, results: &[Outcome], growth: Option<&Growth>, server: Server) {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    println!();
    println!(
        "liveuser loadgen — commit {commit}, {cpus} CPUs, {} users/sessions, {} connections, \
         {} rounds of {:.0} s per workload; medians of the rounds",
        args.users, args.connections, args.rounds, args.duration
    );
    let mut algorithms: Vec<KeyAlgorithm> = Vec::new();
    for r in results {
        if !algorithms.contains(&r.algorithm) {
            algorithms.push(r.algorithm);
        }
    }
    let mut by_algorithm = serde_json::Map::new();
    for &algorithm in &algorithms {
        if algorithms.len() > 1 {
            println!("{}:", algorithm.name());
        }
        let of: Vec<&Outcome> = results
            .iter()
            .filter(|r| r.algorithm == algorithm)
            .collect();
        by_algorithm.insert(algorithm.name().into(), Value::Array(table(&of)));
    }
    let comparison = compare(&by_algorithm);
    let rows = by_algorithm
        .get(algorithms[0].name())
        .cloned()
        .unwrap_or(Value::Null);
    // RenewToken against PostgreSQL's own ceiling for one durable single-row write.
    let per_round = |w: Workload| {
        (0..args.rounds)
            .map(|round| {
                results
                    .iter()
                    .find(|r| r.workload == w && r.round == round)
                    .map(|r| r.rps)
            })
            .collect::<Vec<_>>()
    };
    let mut to_pgbench: Vec<f64> = per_round(Workload::Renew)
        .into_iter()
        .zip(per_round(Workload::Pgbench))
        .filter_map(|(renew, pg)| Some(renew? / pg?))
        .collect();
    to_pgbench.sort_by(f64::total_cmp);
    let renew_to_pgbench =
        (!to_pgbench.is_empty()).then(|| (to_pgbench[to_pgbench.len() / 2], to_pgbench[0]));
    if let Some((median, min)) = renew_to_pgbench {
        println!("renew / pgbench (same round): {median:.2} (min {min:.2}); target ≥ 0.50");
    }
    let Server {
        seed_secs,
        startup,
        rss_mb,
        peak_mb,
        db_mb,
    } = server;
    println!(
        "server: healthy {:.0} ms after start; RSS {rss_mb:.0} MB (peak {peak_mb:.0} MB); database {db_mb:.0} MB on disk; seeding {seed_secs:.1} s",
        startup.as_secs_f64() * 1000.0
    );
    let growth = growth.map(|g| {
        println!();
        println!(
            "growth: {} renewals in {:.1} s ({:.0}/s, {} errors); database {:.1} MB before, {:.1} MB after ({:+.1} %); after them:",
            g.total,
            g.secs,
            g.total as f64 / g.secs,
            g.errors,
            g.size_before as f64 / 1e6,
            g.size_after as f64 / 1e6,
            (g.size_after as f64 / g.size_before as f64 - 1.0) * 100.0
        );
        let after = table(&g.after.iter().collect::<Vec<_>>());
        json!({
            "renewals": g.total,
            "secs": g.secs,
            "errors": g.errors,
            "database_bytes_before": g.size_before,
            "database_bytes_after": g.size_after,
            "results_after": after,
        })
    });
    let document = json!({
        "commit": commit,
        "cpus": cpus,
        "users": args.users,
        "connections": args.connections,
        "duration_secs": args.duration,
        "warmup_secs": args.warmup,
        "client_threads": args.threads,
        "rounds": args.rounds,
        "results": rows,
        "results_by_algorithm": by_algorithm,
        "es256_to_hs256": comparison,
        "growth": growth,
        "server": {
            "start_to_healthy_ms": startup.as_secs_f64() * 1000.0,
            "rss_mb": rss_mb,
            "peak_rss_mb": peak_mb,
            "database_mb": db_mb,
        },
        "seed_secs": seed_secs,
        "backend": args.backend,
        "renew_to_pgbench": renew_to_pgbench.map(|r| r.0),
        "renew_to_pgbench_min": renew_to_pgbench.map(|r| r.1),
    });
    println!("{}", serde_json::to_string(&document).unwrap());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&document).unwrap()).expect("write JSON");
    }
}

/// With both ES256 and HS256 results: each workload's ES256 ratio to healthz over its
/// HS256 ratio (both against the healthz of their own server and round), printed and
/// returned.
fn compare(by_algorithm: &serde_json::Map<String, Value>) -> Value {
    let (Some(Value::Array(es)), Some(Value::Array(hs))) =
        (by_algorithm.get("ES256"), by_algorithm.get("HS256"))
    else {
        return Value::Null;
    };
    println!();
    println!(
        "{:<9} {:>12} {:>12} {:>10}  ES256 against HS256, ratios to healthz of the same server",
        "workload", "ES256 ratio", "HS256 ratio", "ES / HS"
    );
    let mut out = serde_json::Map::new();
    for row in es {
        let name = row["workload"].as_str().unwrap_or_default();
        let Some(other) = hs.iter().find(|r| r["workload"] == name) else {
            continue;
        };
        let (Some(e), Some(h)) = (
            row["ratio_to_healthz"].as_f64(),
            other["ratio_to_healthz"].as_f64(),
        ) else {
            continue;
        };
        println!("{name:<9} {e:>12.3} {h:>12.3} {:>10.3}", e / h);
        out.insert(
            name.into(),
            json!({"es256": e, "hs256": h, "es256_over_hs256": e / h}),
        );
    }
    Value::Object(out)
}

/// Prints the table of `results` (medians of the rounds, each ratio against healthz of
/// its own round) and returns its rows as JSON.
fn table(results: &[&Outcome]) -> Vec<Value> {
    let baseline = |round: usize| {
        results
            .iter()
            .find(|r| r.workload == Workload::Healthz && r.round == round)
            .map(|r| r.rps)
    };
    println!(
        "{:<9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>12} {:>7} {:>9} {:>8}  what",
        "workload",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "errors",
        "ratio (min)",
        "target",
        "flushes/s",
        "writers"
    );
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for first in results {
        if seen.contains(&first.workload) {
            continue;
        }
        seen.push(first.workload);
        let rounds: Vec<&Outcome> = results
            .iter()
            .copied()
            .filter(|r| r.workload == first.workload)
            .collect();
        let median_of = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (!v.is_empty()).then(|| v[v.len() / 2])
        };
        let median = |f: &dyn Fn(&Outcome) -> f64| {
            median_of(rounds.iter().map(|r| f(r)).collect()).unwrap_or(0.0)
        };
        let ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|r| baseline(r.round).map(|b| r.rps / b))
            .collect();
        let ratio = median_of(ratios.clone())
            .map(|m| (m, ratios.iter().copied().fold(f64::INFINITY, f64::min)));
        let (rps, p50, p99, p999) = (
            median(&|r| r.rps),
            median(&|r| r.p50_ms),
            median(&|r| r.p99_ms),
            median(&|r| r.p999_ms),
        );
        // Writers per flush: from the server's batch-size metric where it has one, else
        // every answered request of a durable workload counted as one writer.
        let durable = !matches!(
            first.workload,
            Workload::Healthz | Workload::Query | Workload::AuthCheck
        );
        let flushes_per_s = median_of(
            rounds
                .iter()
                .filter_map(|r| r.flushes.map(|(f, _)| f / (r.requests as f64 / r.rps)))
                .collect(),
        );
        let writers = median_of(
            rounds
                .iter()
                .filter_map(|r| {
                    let (flushes, writers) = r.flushes?;
                    let writers = if writers > 0.0 {
                        writers
                    } else {
                        r.requests as f64
                    };
                    (durable && flushes > 0.0).then(|| writers / flushes)
                })
                .collect(),
        );
        let errors: u64 = rounds.iter().map(|r| r.errors).sum();
        let target = first.workload.target_ratio();
        println!(
            "{:<9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>12} {:>7} {:>9} {:>8}  {}",
            first.workload.name(),
            rps,
            p50,
            p99,
            p999,
            errors,
            ratio.map_or("-".into(), |(m, lo)| format!("{m:.2} ({lo:.2})")),
            target.map_or("-".into(), |x| format!("≥{x:.2}")),
            flushes_per_s.map_or("-".into(), |f| format!("{f:.0}")),
            writers.map_or("-".into(), |w| format!("{w:.1}")),
            first.workload.description(),
        );
        rows.push(json!({
            "workload": first.workload.name(),
            "description": first.workload.description(),
            "errors": errors,
            "rps": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "ratio_to_healthz": ratio.map(|r| r.0),
            "ratio_min": ratio.map(|r| r.1),
            "target_ratio": target,
            "meets_ratio": match (ratio, target) { (Some((x, _)), Some(t)) => Some(x >= t), _ => None },
            "meets_p99": p99 <= 5.0,
            "flushes_per_s": flushes_per_s,
            "writers_per_flush": writers,
            "rounds": rounds.iter().map(|r| json!({
                "rps": r.rps, "requests": r.requests, "errors": r.errors,
                "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms,
                "ratio_to_healthz": baseline(r.round).map(|b| r.rps / b),
                "flushes": r.flushes.map(|f| f.0),
            })).collect::<Vec<_>>(),
        }));
    }
    rows
}
