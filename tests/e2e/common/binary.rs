//! The `liveuser` executable, run as an operator runs it: [`Binary`] serves on loopback
//! port 0 and learns its addresses from the line `serve` writes on stdout; [`cli`] runs
//! an admin command to completion.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::postgres::{Backend, POSTGRES_URL_VAR, backend, postgres_storage_toml};

/// How the CLI says it reached a running server's database: through its admin API on
/// sled, directly on PostgreSQL (which any number of processes share).
pub fn cli_path_to_running_server() -> &'static str {
    match backend() {
        Backend::Sled => "admin API",
        Backend::Postgres => "directly",
    }
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
        let mut command = serve_command(dir, config_toml, env);
        tweak(&mut command);
        Self::start(command)
    }

    /// Spawns `command` (a `liveuser serve`) and waits until it says where it serves.
    fn start(mut command: std::process::Command) -> Binary {
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

/// `liveuser serve` with `config_toml` written to `dir/liveuser.toml`, both listeners on
/// loopback port 0 unless `env` says otherwise, and both output pipes captured.
fn serve_command(
    dir: &std::path::Path,
    config_toml: &str,
    env: &[(&str, &str)],
) -> std::process::Command {
    let config = dir.join("liveuser.toml");
    // Written aside and renamed into place: instances started at once on one
    // directory each write the file, and one must never read another's half-written
    // (or just truncated) copy.
    let written = dir.join(format!("liveuser.toml.{:?}", std::thread::current().id()));
    std::fs::write(&written, config_toml).unwrap();
    std::fs::rename(&written, &config).unwrap();
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
    command
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
    let postgres = postgres_storage_toml(dir);
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
