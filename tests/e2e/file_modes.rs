//! The database is private to the user that runs liveuser: created 0700/0600 whatever
//! the umask, and refused when other users can reach it (issue: a readable database let
//! another local user find the signing key and forge tokens).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use liveuser::app;
use liveuser::clock::OffsetClock;

use crate::common::{
    Binary, CliRun, POSTGRES_URL_VAR, TestApp, binary_config, cli, login, test_config, write_config,
};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `root`, `root` included.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            for entry in std::fs::read_dir(&out[i]).unwrap() {
                out.push(entry.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// Asserts directories 0700 and files 0600 in all of `root`; returns how many were seen.
#[track_caller]
fn assert_private(root: &Path) -> usize {
    let paths = tree(root);
    for path in &paths {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            mode(path),
            expected,
            "{} is {:03o}, expected {expected:03o}",
            path.display(),
            mode(path)
        );
    }
    paths.len()
}

#[test]
fn the_binary_started_under_umask_0022_creates_a_private_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path()).replace(
        &dir.path().join("db").display().to_string(),
        &dir.path().join("data").join("db").display().to_string(),
    );
    let mut server = Binary::serve_with(dir.path(), &config, &[], |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe and touches nothing but the child's mask.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
    });
    for i in 0..50 {
        login(&server.base, &format!("user{i}"));
    }
    let data = dir.path().join("data");
    // The parent liveuser created for the database, the database, the admin token.
    assert_eq!(mode(&data), 0o700);
    assert!(
        assert_private(&data.join("db")) >= 3,
        "sled's files were seen"
    );
    assert_eq!(mode(&data.join("db.admin-token")), 0o600);
    assert!(server.terminate().success());
    // Files written at shutdown too.
    assert_private(&data);
}

/// Runs `liveuser --config <config> <args>` as [`cli`] does, under umask 0022.
fn cli_under_umask_0022(config: &Path, args: &[&str]) -> CliRun {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"));
    command
        .env_remove(POSTGRES_URL_VAR)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::null());
    // SAFETY: umask is async-signal-safe and touches nothing but the child's mask.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let output = command.output().expect("liveuser runs");
    CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn the_direct_mode_cli_under_umask_0022_creates_a_private_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("liveuser.toml");
    std::fs::write(
        &config,
        binary_config(dir.path()).replace(
            &dir.path().join("db").display().to_string(),
            &dir.path().join("data").join("db").display().to_string(),
        ),
    )
    .unwrap();
    let file = dir.path().join("users.jsonl");
    std::fs::write(
        &file,
        "{\"kind\":\"header\",\"format\":\"liveuser-export\",\"version\":2,\"exported_at\":1,\"sessions\":false}\n\
         {\"kind\":\"user\",\"uid\":\"u-1\",\"name\":\"One\",\"agent\":\"\",\"avatar\":\"\",\"update_at\":7}\n\
         {\"kind\":\"end\",\"users\":1,\"identities\":0,\"sessions\":0}\n",
    )
    .unwrap();

    // No server runs: the import opens (creates) the database itself.
    let run = cli_under_umask_0022(&config, &["-v", "import", file.to_str().unwrap()]);
    assert_eq!(run.ok(), "imported 1 users, 0 identities, 0 sessions\n");
    assert!(run.stderr.contains("directly"), "{}", run.stderr);
    // The parent liveuser created for the database, the database, sled's files in it.
    let data = dir.path().join("data");
    assert!(
        assert_private(&data) >= 4,
        "the parent, the database and sled's files were seen"
    );
}

#[test]
fn the_in_process_server_creates_a_private_database() {
    let app = TestApp::spawn_with(|c| {
        c.storage.path = c.storage.path.parent().unwrap().join("data").join("db");
    });
    app.login_ok("alice");
    assert_private(&app.dir.path().join("data"));
}

/// Starts a server on `config` in process and stops it again; the start's error if any.
fn start_and_stop(config: &liveuser::config::Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let running = runtime
        .block_on(app::start(config, Arc::new(OffsetClock::new())))
        .map_err(|e| e.to_string())?;
    runtime.block_on(running.shutdown());
    Ok(())
}

/// Runs `liveuser serve` and expects it to exit at once with one error line.
fn serve_refused(config: &Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_liveuser"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started on a database open to other users");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    stderr
        .lines()
        .find(|l| l.starts_with("liveuser: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_string()
}

#[test]
fn a_database_open_to_other_users_is_refused_by_the_server_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    start_and_stop(&config).expect("a fresh database opens");
    let cli_config = write_config(dir.path());
    let db = dir.path().join("db");
    cli(&cli_config, &["user", "list"]).ok();

    let fix = format!("chmod -R go-rwx {}", db.display());
    // The directory made readable by all, as a umask of 0022 would have made it.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = start_and_stop(&config).unwrap_err();
    assert!(
        err.contains(&format!("{} is open to other users", db.display())),
        "{err}"
    );
    assert!(err.contains(&fix), "{err}");
    let out = dir.path().join("x.jsonl").display().to_string();
    for args in [&["user", "list"][..], &["export", "--out", &out]] {
        let run = cli(&cli_config, args);
        let line = run.failed();
        assert!(line.contains(&fix), "{args:?}: {line}");
    }
    let line = serve_refused(&cli_config);
    assert!(line.contains(&fix), "{line}");

    // A single file readable by others is enough.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o700)).unwrap();
    let conf = db.join("conf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start_and_stop(&config).unwrap_err();
    assert!(
        err.contains(&format!("{} is open to other users", conf.display())),
        "{err}"
    );
    assert!(err.contains(&fix), "{err}");
    let line = cli(&cli_config, &["user", "list"]).failed().to_string();
    assert!(
        line.contains(&conf.display().to_string()) && line.contains(&fix),
        "{line}"
    );

    // Fixed as the message says, it opens again.
    std::process::Command::new("chmod")
        .args(["-R", "go-rwx"])
        .arg(&db)
        .status()
        .unwrap();
    start_and_stop(&config).expect("the fixed database opens");
    cli(&cli_config, &["user", "list"]).ok();
}
