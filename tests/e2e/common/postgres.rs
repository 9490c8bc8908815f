//! PostgreSQL as the backend: [`on_postgres`] runs a test with a schema of its own per
//! temp dir on the server at `LIVEUSER_TEST_POSTGRES_URL`, created at first use and
//! dropped when the test ends, and [`psql`] runs SQL there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use liveuser::config::{Config, StorageBackend};
use liveuser::secret::Secret;

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

/// Points `config`'s storage at the schema of `dir` when the running test is on
/// PostgreSQL; leaves it on sled otherwise.
pub fn postgres_storage(config: &mut Config, dir: &Path) {
    if let Some(url) = postgres_url_for(dir) {
        config.storage.backend = StorageBackend::Postgres;
        config.storage.postgres_url = Secret::new(url);
        config.storage.postgres_pool_size = POOL_SIZE;
    }
}

/// [`postgres_storage`] as the keys of a configuration file's `[storage]` section (none
/// on sled).
pub fn postgres_storage_toml(dir: &Path) -> String {
    match postgres_url_for(dir) {
        Some(url) => format!(
            "backend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_pool_size = {POOL_SIZE}\n"
        ),
        None => String::new(),
    }
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
