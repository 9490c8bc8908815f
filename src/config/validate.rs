//! What types alone cannot say about a configuration, declared once per key.
//!
//! [`rules`] is the whole policy: one entry per checked key, in the order they are
//! checked. A numeric bound is written once, as a range in the key's own unit
//! (`100..=600_000` for a `_ms` key), and its message is derived from it: "must be
//! between 100 and 600000 (10 minutes)". The key is written once too: the entry names
//! the field (`server.body_read_timeout_ms`), and the macros turn it into both the
//! reader of the value and the `section.key` an error shows, so the two cannot drift.
//! Only rules no bound can express (two keys set together, a URL scheme, a log filter)
//! carry a hand-written reason.

use std::ops::{Bound, RangeBounds};

use super::types::{Config, StorageBackend};

/// Longest session lifetime, absolute or idle: ten years.
///
/// Expiry times are `now + lifetime` in Unix seconds: a bound keeps that sum far from
/// overflowing (a panic in a debug build, a wrapped-around past in release), and no
/// session needs to outlive ten years.
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * DAY;

const MIB: u64 = 1024 * 1024;
const DAY: u64 = 86_400;

/// The unit of a numeric key, so a bound can also be shown in a larger unit when it is
/// a whole number of it (`16777216 (16 MiB)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// A plain count (connections, uids, entries).
    Count,
    Bytes,
    Secs,
    Millis,
}

/// One rule about one key.
enum Rule {
    /// A number within `min..=max` (`max` is `u64::MAX` when only a minimum applies).
    /// `zero` says what 0 means, for a key where 0 is allowed and turns something off.
    Range {
        key: &'static str,
        value: fn(&Config) -> u64,
        min: u64,
        max: u64,
        unit: Unit,
        zero: Option<&'static str>,
    },
    /// A text or path that must not be empty.
    NotEmpty {
        key: &'static str,
        is_empty: fn(&Config) -> bool,
    },
    /// A secret of at least `min` bytes, or empty; `empty` says what empty means and
    /// `why` why the minimum (both may be "").
    SecretLength {
        key: &'static str,
        value: fn(&Config) -> usize,
        min: usize,
        why: &'static str,
        empty: &'static str,
    },
    /// Anything else: a condition and the reason it states.
    Must {
        key: &'static str,
        holds: fn(&Config) -> bool,
        reason: &'static str,
    },
}

/// A configuration number as `u64`, whatever its field's integer type.
trait Widen: Copy {
    fn widen(self) -> u64;
}

impl Widen for u32 {
    fn widen(self) -> u64 {
        u64::from(self)
    }
}

impl Widen for u64 {
    fn widen(self) -> u64 {
        self
    }
}

impl Widen for usize {
    fn widen(self) -> u64 {
        u64::try_from(self).unwrap_or(u64::MAX)
    }
}

/// `section.key` of the field `config.section.key`.
macro_rules! key {
    ($section:ident . $key:ident) => {
        concat!(stringify!($section), ".", stringify!($key))
    };
}

/// `range!(section.key in BOUNDS, Unit)`: the field must lie in `BOUNDS` (`a..=b` or
/// `a..`); `.zero_means("…")` after it when 0 is allowed and means something.
macro_rules! range {
    ($section:ident . $key:ident in $bounds:expr, $unit:ident) => {
        Rule::range(
            key!($section.$key),
            |c: &Config| Widen::widen(c.$section.$key),
            $bounds,
            Unit::$unit,
        )
    };
}

/// `not_empty!(section.key)`: a `String` or `PathBuf` field must not be empty.
macro_rules! not_empty {
    ($section:ident . $key:ident) => {
        Rule::NotEmpty {
            key: key!($section.$key),
            is_empty: |c: &Config| Blank::is_blank(&c.$section.$key),
        }
    };
}

/// Every check, in the order they run; the first that fails is reported.
fn rules() -> Vec<Rule> {
    vec![
        range!(server.body_limit_bytes in 1024..=16 * MIB, Bytes),
        range!(server.max_query_uids in 1..=10_000, Count),
        Rule::Must {
            key: key!(server.tls_cert),
            holds: |c| !(c.server.tls_cert.as_os_str().is_empty() && has_tls_key(c)),
            reason: TLS_PAIR,
        },
        Rule::Must {
            key: key!(server.tls_key),
            holds: |c| has_tls_key(c) || c.server.tls_cert.as_os_str().is_empty(),
            reason: TLS_PAIR,
        },
        range!(server.header_read_timeout_ms in 100..=600_000, Millis),
        range!(server.body_read_timeout_ms in 100..=600_000, Millis),
        range!(server.write_timeout_ms in 100..=600_000, Millis),
        range!(server.max_connections in 1..=1_000_000, Count),
        range!(server.max_connections_per_address in 0..=1_000_000, Count).zero_means("no cap"),
        range!(server.first_request_timeout_ms in 100..=600_000, Millis),
        not_empty!(storage.path),
        Rule::Must {
            key: key!(storage.postgres_url),
            holds: |c| {
                c.storage.backend == StorageBackend::Postgres
                    || c.storage.postgres_url.expose().is_empty()
            },
            reason: "is set but storage.backend is \"sled\": set storage.backend = \"postgres\" to use it, or remove it",
        },
        // The URL's own form (sslmode, user, host) is checked when storage is opened, by
        // the module that connects, so config depends on no storage code.
        Rule::Must {
            key: key!(storage.postgres_url),
            holds: |c| {
                c.storage.backend != StorageBackend::Postgres
                    || !c.storage.postgres_url.expose().is_empty()
            },
            reason: "must be set when storage.backend is \"postgres\" (e.g. postgres://liveuser@db.internal/liveuser)",
        },
        range!(storage.postgres_pool_size in 1..=1000, Count),
        // sled panics on a page cache under 256 bytes; anything that small is a typo.
        range!(storage.cache_capacity_bytes in MIB.., Bytes),
        range!(storage.sweep_interval_secs in 1.., Secs),
        not_empty!(token.issuer),
        not_empty!(token.audience),
        range!(token.access_ttl_secs in 60..=7 * DAY, Secs),
        range!(token.refresh_ttl_secs in 60..=MAX_LIFETIME_SECS, Secs),
        range!(token.refresh_idle_secs in 60..=MAX_LIFETIME_SECS, Secs),
        range!(token.max_sessions_per_user in 1.., Count),
        range!(token.reuse_grace_secs in 0..=300, Secs),
        Rule::SecretLength {
            key: key!(token.secret),
            value: |c| c.token.secret.expose().len(),
            min: 32,
            why: "HS256 needs a 256-bit key",
            empty: "to generate one",
        },
        Rule::SecretLength {
            key: key!(token.previous_secret),
            value: |c| c.token.previous_secret.expose().len(),
            min: 32,
            why: "",
            empty: "",
        },
        Rule::Must {
            key: key!(token.previous_secret),
            holds: |c| {
                c.token.previous_secret.expose().is_empty() || !c.token.secret.expose().is_empty()
            },
            reason: "needs token.secret: a previous secret is the one token.secret replaced",
        },
        Rule::Must {
            key: key!(token.previous_secret),
            holds: |c| {
                c.token.previous_secret.expose().is_empty()
                    || c.token.previous_secret.expose() != c.token.secret.expose()
            },
            reason: "must differ from token.secret",
        },
        range!(token.jwks_max_age_secs in 0..=7 * DAY, Secs),
        range!(token.key_publish_secs in 0..=7 * DAY, Secs),
        Rule::Must {
            key: key!(token.key_publish_secs),
            holds: |c| c.token.key_publish_secs >= c.token.jwks_max_age_secs,
            reason: "must be at least token.jwks_max_age_secs: a new key must be in every \
                     verifier's cached JWKS before it signs",
        },
        range!(limits.max_tracked_addresses in 1..=10_000_000, Count),
        Rule::Must {
            key: key!(wx.api_base),
            holds: |c| {
                ["https://", "http://"]
                    .iter()
                    .any(|s| c.wx.api_base.starts_with(s))
            },
            reason: "must be an http:// or https:// URL",
        },
        range!(wx.timeout_ms in 100..=60_000, Millis),
        // tokio runs at most 512 blocking threads; exchanges stuck at WeChat must leave
        // most of them to storage work.
        range!(wx.max_concurrent in 1..=256, Count),
        Rule::Must {
            key: key!(log.level),
            holds: |c| is_log_filter(&c.log.level),
            reason: "must be a level (error, warn, info, debug, trace, off) or tracing filter \
                     directives, each a level or `target=level`",
        },
    ]
}

const TLS_PAIR: &str =
    "server.tls_cert and server.tls_key must be set together (both for HTTPS, neither for HTTP)";

fn has_tls_key(c: &Config) -> bool {
    !c.server.tls_key.as_os_str().is_empty()
}

/// What `not_empty!` asks of a field, a `String` or a `PathBuf`.
trait Blank {
    fn is_blank(&self) -> bool;
}

impl Blank for String {
    fn is_blank(&self) -> bool {
        self.is_empty()
    }
}

impl Blank for std::path::PathBuf {
    fn is_blank(&self) -> bool {
        self.as_os_str().is_empty()
    }
}

impl Rule {
    fn range(
        key: &'static str,
        value: fn(&Config) -> u64,
        bounds: impl RangeBounds<u64>,
        unit: Unit,
    ) -> Rule {
        let min = match bounds.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 0,
        };
        let max = match bounds.end_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n - 1,
            Bound::Unbounded => u64::MAX,
        };
        Rule::Range {
            key,
            value,
            min,
            max,
            unit,
            zero: None,
        }
    }

    /// For a range that starts at 0: what 0 means.
    fn zero_means(mut self, meaning: &'static str) -> Rule {
        if let Rule::Range { zero, .. } = &mut self {
            *zero = Some(meaning);
        }
        self
    }

    fn key(&self) -> &'static str {
        match self {
            Rule::Range { key, .. }
            | Rule::NotEmpty { key, .. }
            | Rule::SecretLength { key, .. }
            | Rule::Must { key, .. } => key,
        }
    }

    /// Whether `config` keeps this rule.
    fn holds(&self, config: &Config) -> bool {
        match self {
            Rule::Range {
                value, min, max, ..
            } => (*min..=*max).contains(&value(config)),
            Rule::NotEmpty { is_empty, .. } => !is_empty(config),
            Rule::SecretLength { value, min, .. } => {
                let len = value(config);
                len == 0 || len >= *min
            }
            Rule::Must { holds, .. } => holds(config),
        }
    }

    /// The reason a value breaking this rule is refused, derived from the rule.
    fn reason(&self) -> String {
        match self {
            Rule::Range {
                min,
                max,
                unit,
                zero,
                ..
            } => {
                let (lo, hi) = (shown(*min, *unit), shown(*max, *unit));
                match (min, max, zero) {
                    (0, _, Some(meaning)) => format!("must be between 0 ({meaning}) and {hi}"),
                    (0, _, None) => format!("must be at most {hi}"),
                    (_, &u64::MAX, _) => format!("must be at least {lo}"),
                    _ => format!("must be between {lo} and {hi}"),
                }
            }
            Rule::NotEmpty { .. } => "must not be empty".into(),
            Rule::SecretLength {
                min, why, empty, ..
            } => {
                let why = if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                };
                let empty = if empty.is_empty() {
                    String::new()
                } else {
                    format!(" {empty}")
                };
                format!("must be at least {min} bytes{why}, or empty{empty}")
            }
            Rule::Must { reason, .. } => (*reason).to_string(),
        }
    }
}

/// A bound as the operator writes it, followed by the same amount in the largest unit it
/// is a whole number of, when there is one: `600000 (10 minutes)`, `1048576 (1 MiB)`.
fn shown(n: u64, unit: Unit) -> String {
    // (size in the key's unit, name of one, name of several)
    const BYTES: &[(u64, &str, &str)] = &[
        (1 << 30, "GiB", "GiB"),
        (1 << 20, "MiB", "MiB"),
        (1 << 10, "KiB", "KiB"),
    ];
    const SECS: &[(u64, &str, &str)] = &[
        (DAY, "day", "days"),
        (3600, "hour", "hours"),
        (60, "minute", "minutes"),
    ];
    const MILLIS: &[(u64, &str, &str)] =
        &[(60_000, "minute", "minutes"), (1000, "second", "seconds")];
    let larger: &[(u64, &str, &str)] = match unit {
        Unit::Count => &[],
        Unit::Bytes => BYTES,
        Unit::Secs => SECS,
        Unit::Millis => MILLIS,
    };
    match larger
        .iter()
        .find(|(size, _, _)| n >= *size && n.is_multiple_of(*size))
    {
        Some((size, one, several)) => {
            let count = n / size;
            format!("{n} ({count} {})", if count == 1 { one } else { several })
        }
        None => n.to_string(),
    }
}

impl Config {
    /// Checks every rule in order; the first broken one gives its key and reason.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        match rules().into_iter().find(|rule| !rule.holds(self)) {
            Some(rule) => Err((rule.key(), rule.reason())),
            None => Ok(()),
        }
    }
}

/// Whether `level` is a filter liveuser takes: what `tracing` parses, where a directive
/// without `=` must be a level. (`tracing` reads a bare word as a target: `verbose` would
/// log nothing at all, not even the start-up lines.)
fn is_log_filter(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    tracing_subscriber::EnvFilter::try_new(level).is_ok()
        && level.split(',').map(str::trim).all(|directive| {
            directive.contains('=')
                || directive.contains('[')
                || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive))
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::load_for_test;

    #[test]
    fn a_bad_value_is_refused_naming_the_key() {
        let err = load_for_test(
            "[token]\nissuer = \"x\" # [server]\naccess_ttl_secs = 5\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("token.access_ttl_secs"));
        assert_eq!(
            err.source, "test.toml: line 3",
            "the file and the line that sets it"
        );
    }

    #[test]
    fn a_log_level_that_would_log_nothing_is_refused() {
        for level in ["verbose", "info,verbose", "", "info,foo=bar=baz"] {
            let err = load_for_test(&format!("[log]\nlevel = \"{level}\"\n"), &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("log.level"), "{level:?}");
        }
        for level in [
            "info",
            "WARN",
            "info,liveuser=debug",
            "debug,ureq::run=trace",
            "off",
        ] {
            let config = load_for_test(&format!("[log]\nlevel = \"{level}\"\n"), &[]);
            assert!(config.is_ok(), "{level:?}: {:?}", config.err());
        }
    }

    #[test]
    fn a_tls_certificate_without_its_key_is_refused() {
        let err = load_for_test("[server]\ntls_cert = \"cert.pem\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.tls_key"));
        let err = load_for_test("", &[("LIVEUSER_SERVER_TLS_KEY", "key.pem")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.tls_cert"));
        let c = load_for_test("[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n", &[])
            .unwrap()
            .config;
        assert_eq!(c.server.tls_key, PathBuf::from("k.pem"));
    }

    #[test]
    fn the_previous_secret_comes_from_the_env_and_needs_a_different_current_secret() {
        let old = "o".repeat(32);
        let new = "n".repeat(32);
        let c = load_for_test(
            "",
            &[
                ("LIVEUSER_TOKEN_SECRET", new.as_str()),
                ("LIVEUSER_TOKEN_PREVIOUS_SECRET", old.as_str()),
            ],
        )
        .unwrap()
        .config;
        assert_eq!(c.token.previous_secret.expose(), &old);
        let alone =
            load_for_test("", &[("LIVEUSER_TOKEN_PREVIOUS_SECRET", old.as_str())]).unwrap_err();
        assert_eq!(alone.key.as_deref(), Some("token.previous_secret"));
        let same = load_for_test(
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
                let err = load_for_test(&format!("[token]\n{key} = {bad}\n"), &[]).unwrap_err();
                assert_eq!(err.key.as_deref(), Some(format!("token.{key}").as_str()));
                assert!(err.reason.contains("315360000"), "{err}");
            }
            let ok = load_for_test(&format!("[token]\n{key} = {MAX_LIFETIME_SECS}\n"), &[]);
            assert!(ok.is_ok(), "ten years is accepted: {:?}", ok.err());
            let env = format!("LIVEUSER_TOKEN_{}", key.to_ascii_uppercase());
            let err = load_for_test("", &[(env.as_str(), "9223372036854775807")]).unwrap_err();
            assert_eq!(err.source, format!("environment variable {env}"));
        }
    }

    #[test]
    fn a_page_cache_too_small_for_sled_is_refused_not_a_panic_at_open() {
        let err = load_for_test("[storage]\ncache_capacity_bytes = 100\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("storage.cache_capacity_bytes"));
        assert!(load_for_test("[storage]\ncache_capacity_bytes = 1048576\n", &[]).is_ok());
    }

    #[test]
    fn postgres_settings_must_agree_with_the_backend_and_never_echo_the_url() {
        let c = load_for_test("", &[]).unwrap().config;
        assert_eq!(c.storage.backend, StorageBackend::Sled);
        assert_eq!(c.storage.postgres_pool_size, 16);
        let url = "postgres://lu:pa55word-xyz@db.internal/liveuser";
        // A URL for a backend that does not use it is a mistake, not a default.
        let err =
            load_for_test(&format!("[storage]\npostgres_url = \"{url}\"\n"), &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("storage.postgres_url"));
        assert!(!err.to_string().contains("pa55word"), "{err}");
        let err = load_for_test("[storage]\nbackend = \"postgres\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("storage.postgres_url"));
        let err = load_for_test("[storage]\nbackend = \"mysql\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
        let c = load_for_test(
            "[storage]\nbackend = \"postgres\"\n",
            &[("LIVEUSER_STORAGE_POSTGRES_URL", url)],
        )
        .unwrap()
        .config;
        assert_eq!(c.storage.postgres_url.expose(), url);
        assert!(
            !format!("{c:?}").contains("pa55word"),
            "Debug hides the URL"
        );
        let err = load_for_test(
            &format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_pool_size = 0\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("storage.postgres_pool_size"));
    }

    #[test]
    fn connection_bounds_have_defaults_and_limits() {
        let c = load_for_test("", &[]).unwrap().config;
        assert_eq!(c.server.header_read_timeout_ms, 10_000);
        assert_eq!(c.server.body_read_timeout_ms, 10_000);
        assert_eq!(c.server.write_timeout_ms, 10_000);
        assert_eq!(c.server.max_connections, 1024);
        assert_eq!(c.limits.max_tracked_addresses, 100_000);
        let err = load_for_test("[server]\nmax_connections = 0\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.max_connections"));
        let err = load_for_test("[server]\nheader_read_timeout_ms = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.header_read_timeout_ms"));
        let err = load_for_test("[server]\nwrite_timeout_ms = 99\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.write_timeout_ms"));
        assert_eq!(c.server.max_connections_per_address, 64);
        assert_eq!(c.server.first_request_timeout_ms, 5_000);
        let err =
            load_for_test("[server]\nmax_connections_per_address = 2000000\n", &[]).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("server.max_connections_per_address")
        );
        let err = load_for_test("[server]\nfirst_request_timeout_ms = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.first_request_timeout_ms"));
        let env = [("LIVEUSER_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "0")];
        assert_eq!(
            load_for_test("", &env)
                .unwrap()
                .config
                .server
                .max_connections_per_address,
            0
        );
    }

    #[test]
    fn every_rule_names_a_key_of_the_configuration() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for rule in rules() {
            let (section, key) = rule.key().split_once('.').unwrap();
            assert!(
                defaults[section].as_table().unwrap().contains_key(key),
                "{}",
                rule.key()
            );
        }
    }

    #[test]
    fn the_defaults_keep_every_rule() {
        let defaults = Config::default();
        for rule in rules() {
            assert!(rule.holds(&defaults), "{}: {}", rule.key(), rule.reason());
        }
    }

    #[test]
    fn a_bound_is_shown_as_written_and_in_a_larger_unit_when_whole() {
        let reason = |text: &str| load_for_test(text, &[]).unwrap_err().reason;
        assert_eq!(
            reason("[server]\nbody_limit_bytes = 1\n"),
            "must be between 1024 (1 KiB) and 16777216 (16 MiB)"
        );
        assert_eq!(
            reason("[server]\nheader_read_timeout_ms = 1\n"),
            "must be between 100 and 600000 (10 minutes)"
        );
        assert_eq!(
            reason("[server]\nmax_connections_per_address = 1000001\n"),
            "must be between 0 (no cap) and 1000000"
        );
        assert_eq!(
            reason("[storage]\nsweep_interval_secs = 0\n"),
            "must be at least 1"
        );
        assert_eq!(
            reason("[token]\nreuse_grace_secs = 301\n"),
            "must be at most 300 (5 minutes)"
        );
        assert_eq!(
            reason("[token]\naccess_ttl_secs = 5\n"),
            "must be between 60 (1 minute) and 604800 (7 days)"
        );
        assert_eq!(
            reason("[token]\nsecret = \"short\"\n"),
            "must be at least 32 bytes (HS256 needs a 256-bit key), or empty to generate one"
        );
        assert_eq!(reason("[token]\nissuer = \"\"\n"), "must not be empty");
    }

    #[test]
    fn a_key_published_for_less_than_the_jwks_may_be_cached_is_refused_naming_both_keys() {
        let err = load_for_test(
            "[token]\njwks_max_age_secs = 600\nkey_publish_secs = 599\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("token.key_publish_secs"));
        assert!(
            err.reason.contains("token.jwks_max_age_secs"),
            "{}",
            err.reason
        );
        assert!(
            load_for_test(
                "[token]\njwks_max_age_secs = 600\nkey_publish_secs = 600\n",
                &[]
            )
            .is_ok()
        );
        let c = load_for_test("[token]\nalgorithm = \"HS256\"\n", &[])
            .unwrap()
            .config;
        assert_eq!(c.token.algorithm, crate::model::KeyAlgorithm::HS256);
        assert_eq!(
            Config::default().token.algorithm,
            crate::model::KeyAlgorithm::ES256
        );
        assert!(load_for_test("[token]\nalgorithm = \"RS256\"\n", &[]).is_err());
        assert!(load_for_test("[token]\nalgorithm = \"es256\"\n", &[]).is_err());
    }
}
