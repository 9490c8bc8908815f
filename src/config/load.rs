//! The layers of a configuration: the file (or the defaults, when it is absent and was
//! not named with `--config`), then `LIVEUSER_*` environment overrides, then the rules of
//! [`validate`](super::validate). Every error says where the bad value came from — the
//! file and line, or the environment variable — and which key it is.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::types::Config;

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
    pub config: Config,
    /// Things worth telling the operator (unknown `LIVEUSER_*` variables).
    pub warnings: Vec<String>,
}

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "LIVEUSER_";

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
                match text.and_then(|text| line_of(text, key)) {
                    Some(line) => format!("{file_label}: line {line}"),
                    None => file_label.to_string(),
                }
            },
            key: Some(key.to_string()),
            reason,
        })?;
        Ok(Loaded { config, warnings })
    }
}

/// The line of the file that sets `key` (`section.name`), for errors found after
/// parsing. liveuser's keys are plain names in `[section]` tables.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (section, name) = key.split_once('.')?;
    let mut current = "";
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim();
        } else if current == section && line.split_once('=').is_some_and(|(k, _)| k.trim() == name)
        {
            return Some(i + 1);
        }
    }
    None
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
    use crate::config::{WxMode, load_for_test};

    #[test]
    fn an_unknown_key_is_refused_with_file_line_and_key() {
        let err = load_for_test("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n", &[])
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("test.toml: line 3 (`listen_port`)"),
            "{text}"
        );
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn a_wrong_type_is_refused_naming_the_key() {
        let err = load_for_test("[wx]\ntimeout_ms = \"soon\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("`timeout_ms`"), "{err}");
    }

    #[test]
    fn env_overrides_the_file_with_the_keys_type() {
        let c = load_for_test(
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
        let err = load_for_test("", &[("LIVEUSER_WX_TIMEOUT_MS", "soon")]).unwrap_err();
        assert_eq!(err.source, "environment variable LIVEUSER_WX_TIMEOUT_MS");
        let err = load_for_test("", &[("LIVEUSER_TOKEN_SECRET", "short")]).unwrap_err();
        assert_eq!(err.source, "environment variable LIVEUSER_TOKEN_SECRET");
        assert!(
            !err.to_string().contains("short"),
            "the value is a secret: {err}"
        );
    }

    #[test]
    fn unknown_env_variables_are_warnings() {
        let loaded =
            load_for_test("", &[("LIVEUSER_WX_SECRTE", "x"), ("LIVEUSER_X", "y")]).unwrap();
        assert_eq!(loaded.warnings.len(), 2);
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
}
