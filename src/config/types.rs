//! The configuration's sections and keys, and each key's default, written once: in the
//! section's `Default`, which the loader also uses to learn each key's type for
//! environment overrides.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::KeyAlgorithm;
use crate::secret::Secret;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listeners and request limits.
    pub server: ServerConfig,
    /// `[storage]`: the backend and where its data lives, and the read caches.
    pub storage: StorageConfig,
    /// `[token]`: access tokens and refresh-token sessions.
    pub token: TokenConfig,
    /// `[wx]`: the WeChat code exchange.
    pub wx: WxConfig,
    /// `[log]`: log level and format.
    pub log: LogConfig,
    /// `[limits]`: per-client-address rate limits.
    pub limits: LimitsConfig,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public API listener; port 0 picks a free port (the bound address is logged, and
    /// `serve` writes it on stdout).
    pub listen: SocketAddr,
    /// Admin API listener (loopback by default).
    pub admin_listen: SocketAddr,
    /// Largest accepted request body.
    pub body_limit_bytes: u64,
    /// Most uids one QueryUser call may ask for.
    pub max_query_uids: usize,
    /// PEM certificate chain for HTTPS on `listen`; empty: plain HTTP. Set with `tls_key`.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`; empty: plain HTTP.
    pub tls_key: PathBuf,
    /// Serve `GET /metrics` and record request metrics.
    pub metrics: bool,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request's body.
    pub body_read_timeout_ms: u64,
    /// How long an answer may wait on a client that takes none of it before the
    /// connection is closed.
    pub write_timeout_ms: u64,
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) at most; more are closed at
    /// once. 0 turns the cap off; `limits.trusted_proxies` are exempt.
    pub max_connections_per_address: usize,
    /// How long a new connection may take to deliver its first request's headers (the
    /// TLS handshake included); at most `header_read_timeout_ms` applies.
    pub first_request_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            body_limit_bytes: 64 * 1024,
            max_query_uids: 100,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            metrics: true,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_connections: 1024,
            max_connections_per_address: 64,
            first_request_timeout_ms: 5_000,
        }
    }
}

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded sled database at `storage.path`: one process, one machine.
    Sled,
    /// A PostgreSQL database at `storage.postgres_url`, shared by any number of
    /// instances.
    Postgres,
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sled` (the default) or `postgres`.
    pub backend: StorageBackend,
    /// A libpq URL (`postgres://user@host/db?sslmode=verify-full`). It may hold a
    /// password, so it is a secret: only its host and database are ever logged.
    pub postgres_url: Secret<String>,
    /// Connections each instance keeps to PostgreSQL at most.
    pub postgres_pool_size: usize,
    /// Directory of the sled database (not used on PostgreSQL).
    pub path: PathBuf,
    /// Size of sled's page cache. sled's own default (1 GiB) is far more than a login
    /// service needs, so liveuser defaults to 128 MiB.
    pub cache_capacity_bytes: u64,
    /// How often expired and revoked sessions are swept from storage.
    pub sweep_interval_secs: u64,
    /// Entries of the user-record cache in front of the database (QueryUser's reads); 0
    /// turns it off.
    pub user_cache_entries: usize,
    /// Entries of the session cache in front of the database (the per-request live-session
    /// check); 0 turns it off.
    pub session_cache_entries: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sled,
            postgres_url: Secret::default(),
            postgres_pool_size: 16,
            path: PathBuf::from("./data/liveuser.db"),
            cache_capacity_bytes: 128 * 1024 * 1024,
            sweep_interval_secs: 600,
            user_cache_entries: 100_000,
            session_cache_entries: 100_000,
        }
    }
}

/// `[token]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Access-token lifetime.
    pub access_ttl_secs: u64,
    /// Absolute session lifetime; rotation never extends it.
    pub refresh_ttl_secs: u64,
    /// A session unused for this long expires.
    pub refresh_idle_secs: u64,
    /// Live sessions per user; a new login evicts the oldest.
    pub max_sessions_per_user: usize,
    /// Whether RenewToken rotates the refresh token.
    pub rotation: bool,
    /// How long a just-rotated refresh token may be retried for the same successor.
    pub reuse_grace_secs: u64,
    /// The algorithm of generated signing keys (`"ES256"` or `"HS256"`). A database keeps
    /// signing with the key it has until `liveuser token rotate-key`.
    pub algorithm: KeyAlgorithm,
    /// HS256 signing secret; empty means "generate a key and keep it in the database".
    pub secret: Secret<String>,
    /// The secret `secret` replaced: it verifies (never signs) the tokens it signed for
    /// one access-token lifetime after the first start that sees it.
    pub previous_secret: Secret<String>,
    /// `Cache-Control: max-age` of `GET /.well-known/jwks.json`.
    pub jwks_max_age_secs: u64,
    /// How long a rotated-in key is published before it signs, so that every verifier's
    /// cached JWKS has it by then (at least `jwks_max_age_secs`).
    pub key_publish_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: "liveuser".into(),
            audience: "liveuser".into(),
            access_ttl_secs: 7200,
            refresh_ttl_secs: 30 * 86400,
            refresh_idle_secs: 15 * 86400,
            max_sessions_per_user: 50,
            rotation: true,
            reuse_grace_secs: 10,
            algorithm: KeyAlgorithm::ES256,
            secret: Secret::default(),
            previous_secret: Secret::default(),
            jwks_max_age_secs: 300,
            key_publish_secs: 900,
        }
    }
}

/// How Login turns a code into an openid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WxMode {
    /// Call WeChat's `jscode2session`.
    Wechat,
    /// Development only: the code itself names the user; WeChat is never called.
    Mock,
}

/// `[wx]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WxConfig {
    /// `wechat` or `mock`.
    pub mode: WxMode,
    pub appid: String,
    /// Mini-program app secret.
    pub secret: Secret<String>,
    /// Base URL of WeChat's API (tests point it at a fake on loopback).
    pub api_base: String,
    /// Timeout of one call to WeChat.
    pub timeout_ms: u64,
    /// Exchanges with WeChat in progress at once, at most; each holds a blocking thread
    /// while it waits for WeChat. A Login that finds them all busy waits up to
    /// `timeout_ms` for one to end, then answers `unavailable`.
    pub max_concurrent: usize,
}

impl Default for WxConfig {
    fn default() -> Self {
        WxConfig {
            mode: WxMode::Wechat,
            appid: String::new(),
            secret: Secret::default(),
            api_base: "https://api.weixin.qq.com".into(),
            timeout_ms: 5000,
            max_concurrent: 64,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or a `tracing` filter directive (`info,liveuser=debug`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[limits]`: per client address; 0 turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Login calls per minute per client address.
    pub login_per_min: u32,
    /// RenewToken calls per minute per client address.
    pub renew_per_min: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Client addresses each limiter remembers at most (bounds its memory).
    pub max_tracked_addresses: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            login_per_min: 60,
            renew_per_min: 120,
            trusted_proxies: Vec::new(),
            max_tracked_addresses: 100_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_for_test;

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = load_for_test("", &[]).unwrap().config;
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.server.body_limit_bytes, 65536);
        assert_eq!(c.server.max_query_uids, 100);
        assert_eq!(c.storage.path, PathBuf::from("./data/liveuser.db"));
        assert_eq!(c.token.access_ttl_secs, 7200);
        assert_eq!(c.token.refresh_ttl_secs, 2_592_000);
        assert_eq!(c.token.refresh_idle_secs, 1_296_000);
        assert_eq!(c.token.max_sessions_per_user, 50);
        assert!(c.token.rotation);
        assert_eq!(c.token.reuse_grace_secs, 10);
        assert_eq!(c.wx.mode, WxMode::Wechat);
        assert_eq!(c.wx.api_base, "https://api.weixin.qq.com");
        assert_eq!(c.wx.timeout_ms, 5000);
        assert_eq!(c.wx.max_concurrent, 64);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.limits.login_per_min, 60);
        assert_eq!(c.limits.renew_per_min, 120);
    }

    #[test]
    fn the_secret_does_not_show_in_debug_output() {
        let c = load_for_test("[wx]\nsecret = \"very-secret-value\"\n", &[])
            .unwrap()
            .config;
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }
}
