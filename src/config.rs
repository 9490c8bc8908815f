//! `liveuser.toml`: the keys and defaults of the product contract, layered file → env.
//!
//! Every key can be overridden by an environment variable `LIVEUSER_<SECTION>_<KEY>`
//! (`LIVEUSER_WX_SECRET`, `LIVEUSER_LIMITS_LOGIN_PER_MIN`). Section names have no
//! underscore, so the split is unambiguous. Unknown keys in the file are refused, so a
//! typo never silently falls back to a default; unknown `LIVEUSER_*` variables are
//! returned as warnings for the caller to log.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listeners and request limits.
    pub server: ServerConfig,
    /// `[storage]`: the sled database.
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
    /// Public API listener; port 0 picks a free port (the bound address is logged).
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
            max_connections: 1024,
            max_connections_per_address: 64,
            first_request_timeout_ms: 5_000,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Size of sled's page cache. sled's own default (1 GiB) is far more than a login
    /// service needs, so liveuser defaults to 128 MiB.
    pub cache_capacity_bytes: u64,
    /// How often expired and revoked sessions are swept from storage.
    pub sweep_interval_secs: u64,
    /// Entries of the user-record cache in front of sled (QueryUser's reads); 0 turns it off.
    pub user_cache_entries: usize,
    /// Entries of the session cache in front of sled (the per-request live-session
    /// check); 0 turns it off.
    pub session_cache_entries: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
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
    /// HS256 signing secret; empty means "generate one and keep it in the database".
    pub secret: Secret<String>,
    /// The secret `secret` replaced: it verifies (never signs) the tokens it signed for
    /// one access-token lifetime after the first start that sees it.
    pub previous_secret: Secret<String>,
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
            secret: Secret::default(),
            previous_secret: Secret::default(),
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
    /// Mini-program appid.
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

/// A refused configuration: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or the environment variable, the bad value came from.
    pub source: String,
    /// The key, as `section.key`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}: {}", self.source, key, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration file is and whether the operator named it.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Path of the TOML file.
    pub path: PathBuf,
    /// `true` when given with `--config`: then a missing file is an error, not defaults.
    pub explicit: bool,
}

/// A loaded configuration and the warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things worth telling the operator (unknown `LIVEUSER_*` variables).
    pub warnings: Vec<String>,
}

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "LIVEUSER_";

/// Longest session lifetime, absolute or idle: ten years.
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

impl Config {
    /// Loads the file (or defaults when it is absent and was not named explicitly), then
    /// applies `LIVEUSER_*` overrides from the process environment, then validates.
    pub fn load(source: &ConfigSource) -> Result<Loaded, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (tests).
    pub fn load_with_env(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let file_label = source.path.display().to_string();
        let text = match std::fs::read_to_string(&source.path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => None,
            Err(e) => {
                return Err(ConfigError {
                    source: file_label,
                    key: None,
                    reason: format!("cannot read the file: {e}"),
                });
            }
        };
        Self::from_parts(&file_label, text.as_deref(), env)
    }

    /// Builds a configuration from the file text (if any) and environment pairs.
    pub fn from_parts(
        file_label: &str,
        text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut table: toml::Table = match text {
            Some(text) => text
                .parse::<toml::Table>()
                .map_err(|e| toml_error(file_label, text, e.message(), e.span()))?,
            None => toml::Table::new(),
        };
        // Check the file alone first, so a typo in it is reported against the file.
        if let Some(text) = text {
            toml::from_str::<Config>(text)
                .map_err(|e| toml_error(file_label, text, e.message(), e.span()))?;
        }

        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut warnings = Vec::new();
        let mut from_env = BTreeSet::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once('_') else {
                warnings.push(format!("ignoring unknown environment variable {name}"));
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let Some(default) = defaults
                .get(&section)
                .and_then(|s| s.as_table())
                .and_then(|s| s.get(&key))
            else {
                warnings.push(format!("ignoring unknown environment variable {name}"));
                continue;
            };
            let parsed = env_value(default, &value).map_err(|reason| ConfigError {
                source: format!("environment variable {name}"),
                key: Some(format!("{section}.{key}")),
                reason,
            })?;
            // Check the override alone, so a bad value is reported against its variable.
            let mut probe = defaults.clone();
            if let Some(s) = probe.get_mut(&section).and_then(|s| s.as_table_mut()) {
                s.insert(key.clone(), parsed.clone());
            }
            if let Err(e) = probe.try_into::<Config>() {
                return Err(ConfigError {
                    source: format!("environment variable {name}"),
                    key: Some(format!("{section}.{key}")),
                    reason: e.message().trim().to_string(),
                });
            }
            table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| ConfigError {
                    source: file_label.to_string(),
                    key: Some(section.clone()),
                    reason: "must be a table".into(),
                })?
                .insert(key.clone(), parsed);
            from_env.insert(format!("{section}.{key}"));
        }

        let config: Config = table.try_into().map_err(|e: toml::de::Error| ConfigError {
            source: "environment".into(),
            key: None,
            reason: e.message().to_string(),
        })?;
        config.validate().map_err(|(key, reason)| ConfigError {
            source: if from_env.contains(key) {
                format!("environment variable {}", env_name(key))
            } else {
                file_label.to_string()
            },
            key: Some(key.to_string()),
            reason,
        })?;
        Ok(Loaded { config, warnings })
    }

    /// Checks what types alone cannot; the error names the key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), (&'static str, String)> {
            if ok {
                Ok(())
            } else {
                Err((key, reason.to_string()))
            }
        }
        let s = &self.server;
        check(
            (1024..=16 * 1024 * 1024).contains(&s.body_limit_bytes),
            "server.body_limit_bytes",
            "must be between 1024 and 16777216",
        )?;
        check(
            (1..=10_000).contains(&s.max_query_uids),
            "server.max_query_uids",
            "must be between 1 and 10000",
        )?;
        check(
            s.tls_cert.as_os_str().is_empty() == s.tls_key.as_os_str().is_empty(),
            if s.tls_cert.as_os_str().is_empty() {
                "server.tls_cert"
            } else {
                "server.tls_key"
            },
            "server.tls_cert and server.tls_key must be set together (both for HTTPS, neither for HTTP)",
        )?;
        check(
            (100..=600_000).contains(&s.header_read_timeout_ms),
            "server.header_read_timeout_ms",
            "must be between 100 and 600000",
        )?;
        check(
            (100..=600_000).contains(&s.body_read_timeout_ms),
            "server.body_read_timeout_ms",
            "must be between 100 and 600000",
        )?;
        check(
            (1..=1_000_000).contains(&s.max_connections),
            "server.max_connections",
            "must be between 1 and 1000000",
        )?;
        check(
            s.max_connections_per_address <= 1_000_000,
            "server.max_connections_per_address",
            "must be between 0 (no cap) and 1000000",
        )?;
        check(
            (100..=600_000).contains(&s.first_request_timeout_ms),
            "server.first_request_timeout_ms",
            "must be between 100 and 600000",
        )?;
        check(
            !self.storage.path.as_os_str().is_empty(),
            "storage.path",
            "must not be empty",
        )?;
        // sled panics on a page cache under 256 bytes; anything that small is a typo.
        check(
            self.storage.cache_capacity_bytes >= 1024 * 1024,
            "storage.cache_capacity_bytes",
            "must be at least 1048576 (1 MiB)",
        )?;
        check(
            self.storage.sweep_interval_secs >= 1,
            "storage.sweep_interval_secs",
            "must be at least 1",
        )?;
        let t = &self.token;
        check(!t.issuer.is_empty(), "token.issuer", "must not be empty")?;
        check(
            !t.audience.is_empty(),
            "token.audience",
            "must not be empty",
        )?;
        check(
            (60..=7 * 86400).contains(&t.access_ttl_secs),
            "token.access_ttl_secs",
            "must be between 60 and 604800",
        )?;
        // Expiry times are `now + lifetime` in Unix seconds: a bound keeps that sum far
        // from overflowing (a panic in a debug build, a wrapped-around past in release),
        // and no session needs to outlive ten years.
        check(
            (60..=MAX_LIFETIME_SECS).contains(&t.refresh_ttl_secs),
            "token.refresh_ttl_secs",
            "must be between 60 and 315360000 (ten years)",
        )?;
        check(
            (60..=MAX_LIFETIME_SECS).contains(&t.refresh_idle_secs),
            "token.refresh_idle_secs",
            "must be between 60 and 315360000 (ten years)",
        )?;
        check(
            t.max_sessions_per_user >= 1,
            "token.max_sessions_per_user",
            "must be at least 1",
        )?;
        check(
            t.reuse_grace_secs <= 300,
            "token.reuse_grace_secs",
            "must be at most 300",
        )?;
        check(
            t.secret.expose().is_empty() || t.secret.expose().len() >= 32,
            "token.secret",
            "must be at least 32 bytes (HS256 needs a 256-bit key), or empty to generate one",
        )?;
        let previous = t.previous_secret.expose();
        check(
            previous.is_empty() || previous.len() >= 32,
            "token.previous_secret",
            "must be at least 32 bytes, or empty",
        )?;
        check(
            previous.is_empty() || !t.secret.expose().is_empty(),
            "token.previous_secret",
            "needs token.secret: a previous secret is the one token.secret replaced",
        )?;
        check(
            previous.is_empty() || previous != t.secret.expose(),
            "token.previous_secret",
            "must differ from token.secret",
        )?;
        check(
            (1..=10_000_000).contains(&self.limits.max_tracked_addresses),
            "limits.max_tracked_addresses",
            "must be between 1 and 10000000",
        )?;
        let w = &self.wx;
        check(
            w.api_base.starts_with("https://") || w.api_base.starts_with("http://"),
            "wx.api_base",
            "must be an http:// or https:// URL",
        )?;
        check(
            (100..=60_000).contains(&w.timeout_ms),
            "wx.timeout_ms",
            "must be between 100 and 60000",
        )?;
        // tokio runs at most 512 blocking threads; exchanges stuck at WeChat must leave
        // most of them to storage work.
        check(
            (1..=256).contains(&w.max_concurrent),
            "wx.max_concurrent",
            "must be between 1 and 256",
        )?;
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "must be a level (error, warn, info, debug, trace) or a tracing filter directive",
        )?;
        Ok(())
    }
}

/// `token.secret` → `LIVEUSER_TOKEN_SECRET`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Reads an environment value as the type of the key's default.
fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match default {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        toml::Value::Boolean(_) => match raw.trim() {
            "true" | "1" => Ok(toml::Value::Boolean(true)),
            "false" | "0" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        toml::Value::Array(_) => {
            let items = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect();
            Ok(toml::Value::Array(items))
        }
        _ => Err("this key cannot be set from the environment".into()),
    }
}

/// Turns a TOML error into "file: line N (`key`): reason".
fn toml_error(
    file: &str,
    text: &str,
    message: &str,
    span: Option<std::ops::Range<usize>>,
) -> ConfigError {
    let key = span.map(|span| {
        let start = span.start.min(text.len());
        let line_no = text[..start].matches('\n').count() + 1;
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = text[line_start..].lines().next().unwrap_or("");
        match line.split_once('=') {
            Some((key, _)) => format!("line {line_no} (`{}`)", key.trim()),
            None => format!("line {line_no}"),
        }
    });
    // A type error quotes the value; for a secret key that would print the secret.
    let reason = if key.as_deref().is_some_and(|k| k.contains("secret")) {
        "invalid value (not shown: this key holds a secret)".to_string()
    } else {
        message.trim().to_string()
    };
    ConfigError {
        source: file.to_string(),
        key,
        reason,
    }
}

/// The default location of the configuration file.
pub fn default_path() -> &'static Path {
    Path::new("./liveuser.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        Config::from_parts(
            "test.toml",
            Some(text),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = load("", &[]).unwrap().config;
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
    fn an_unknown_key_is_refused_with_file_line_and_key() {
        let err = load("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("test.toml: line 3 (`listen_port`)"),
            "{text}"
        );
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn a_wrong_type_is_refused_naming_the_key() {
        let err = load("[wx]\ntimeout_ms = \"soon\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("`timeout_ms`"), "{err}");
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_key() {
        let err = load("[token]\naccess_ttl_secs = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("token.access_ttl_secs"));
        assert_eq!(err.source, "test.toml");
    }

    #[test]
    fn env_overrides_the_file_with_the_keys_type() {
        let c = load(
            "[wx]\nmode = \"mock\"\n",
            &[
                ("LIVEUSER_WX_SECRET", "12345"),
                ("LIVEUSER_LIMITS_LOGIN_PER_MIN", "7"),
                ("LIVEUSER_TOKEN_ROTATION", "false"),
                ("LIVEUSER_LIMITS_TRUSTED_PROXIES", "10.0.0.1, ::1"),
                ("LIVEUSER_SERVER_LISTEN", "127.0.0.1:0"),
            ],
        )
        .unwrap()
        .config;
        assert_eq!(c.wx.secret.expose(), "12345");
        assert_eq!(c.wx.mode, WxMode::Mock);
        assert_eq!(c.limits.login_per_min, 7);
        assert!(!c.token.rotation);
        assert_eq!(c.limits.trusted_proxies.len(), 2);
        assert_eq!(c.server.listen.port(), 0);
    }

    #[test]
    fn a_bad_env_value_names_the_variable() {
        let err = load("", &[("LIVEUSER_WX_TIMEOUT_MS", "soon")]).unwrap_err();
        assert_eq!(err.source, "environment variable LIVEUSER_WX_TIMEOUT_MS");
        let err = load("", &[("LIVEUSER_TOKEN_SECRET", "short")]).unwrap_err();
        assert_eq!(err.source, "environment variable LIVEUSER_TOKEN_SECRET");
        assert!(
            !err.to_string().contains("short"),
            "the value is a secret: {err}"
        );
    }

    #[test]
    fn a_tls_certificate_without_its_key_is_refused() {
        let err = load("[server]\ntls_cert = \"cert.pem\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.tls_key"));
        let err = load("", &[("LIVEUSER_SERVER_TLS_KEY", "key.pem")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.tls_cert"));
        let c = load("[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n", &[])
            .unwrap()
            .config;
        assert_eq!(c.server.tls_key, PathBuf::from("k.pem"));
    }

    #[test]
    fn unknown_env_variables_are_warnings() {
        let loaded = load("", &[("LIVEUSER_WX_SECRTE", "x"), ("LIVEUSER_X", "y")]).unwrap();
        assert_eq!(loaded.warnings.len(), 2);
    }

    #[test]
    fn the_secret_does_not_show_in_debug_output() {
        let c = load("[wx]\nsecret = \"very-secret-value\"\n", &[])
            .unwrap()
            .config;
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_and_a_missing_default_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.toml");
        let explicit = ConfigSource {
            path: path.clone(),
            explicit: true,
        };
        assert!(Config::load_with_env(&explicit, []).is_err());
        let implicit = ConfigSource {
            path,
            explicit: false,
        };
        assert!(Config::load_with_env(&implicit, []).is_ok());
    }

    #[test]
    fn the_previous_secret_comes_from_the_env_and_needs_a_different_current_secret() {
        let old = "o".repeat(32);
        let new = "n".repeat(32);
        let c = load(
            "",
            &[
                ("LIVEUSER_TOKEN_SECRET", new.as_str()),
                ("LIVEUSER_TOKEN_PREVIOUS_SECRET", old.as_str()),
            ],
        )
        .unwrap()
        .config;
        assert_eq!(c.token.previous_secret.expose(), &old);
        let alone = load("", &[("LIVEUSER_TOKEN_PREVIOUS_SECRET", old.as_str())]).unwrap_err();
        assert_eq!(alone.key.as_deref(), Some("token.previous_secret"));
        let same = load(
            "",
            &[
                ("LIVEUSER_TOKEN_SECRET", old.as_str()),
                ("LIVEUSER_TOKEN_PREVIOUS_SECRET", old.as_str()),
            ],
        )
        .unwrap_err();
        assert!(same.reason.contains("differ"), "{same}");
        assert!(
            !same.to_string().contains(&old),
            "the value is a secret: {same}"
        );
    }

    #[test]
    fn session_lifetimes_are_bounded_so_expiry_times_cannot_overflow() {
        for key in ["refresh_ttl_secs", "refresh_idle_secs"] {
            for bad in [i64::MAX as u64, MAX_LIFETIME_SECS + 1] {
                let err = load(&format!("[token]\n{key} = {bad}\n"), &[]).unwrap_err();
                assert_eq!(err.key.as_deref(), Some(format!("token.{key}").as_str()));
                assert!(err.reason.contains("315360000"), "{err}");
            }
            let ok = load(&format!("[token]\n{key} = {MAX_LIFETIME_SECS}\n"), &[]);
            assert!(ok.is_ok(), "ten years is accepted: {:?}", ok.err());
            let env = format!("LIVEUSER_TOKEN_{}", key.to_ascii_uppercase());
            let err = load("", &[(env.as_str(), "9223372036854775807")]).unwrap_err();
            assert_eq!(err.source, format!("environment variable {env}"));
        }
    }

    #[test]
    fn a_page_cache_too_small_for_sled_is_refused_not_a_panic_at_open() {
        let err = load("[storage]\ncache_capacity_bytes = 100\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("storage.cache_capacity_bytes"));
        assert!(load("[storage]\ncache_capacity_bytes = 1048576\n", &[]).is_ok());
    }

    #[test]
    fn connection_bounds_have_defaults_and_limits() {
        let c = load("", &[]).unwrap().config;
        assert_eq!(c.server.header_read_timeout_ms, 10_000);
        assert_eq!(c.server.body_read_timeout_ms, 10_000);
        assert_eq!(c.server.max_connections, 1024);
        assert_eq!(c.limits.max_tracked_addresses, 100_000);
        let err = load("[server]\nmax_connections = 0\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.max_connections"));
        let err = load("[server]\nheader_read_timeout_ms = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.header_read_timeout_ms"));
        assert_eq!(c.server.max_connections_per_address, 64);
        assert_eq!(c.server.first_request_timeout_ms, 5_000);
        let err = load("[server]\nmax_connections_per_address = 2000000\n", &[]).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("server.max_connections_per_address")
        );
        let err = load("[server]\nfirst_request_timeout_ms = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.first_request_timeout_ms"));
        let env = [("LIVEUSER_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "0")];
        assert_eq!(
            load("", &env)
                .unwrap()
                .config
                .server
                .max_connections_per_address,
            0
        );
    }
}
