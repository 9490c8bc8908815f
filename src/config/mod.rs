//! `liveuser.toml`: the keys and defaults of the product contract, layered file → env.
//!
//! Three ideas, one file each:
//!
//! - `types`: the sections and keys as serde structs, each key's default
//!   written once, in its section's `Default`;
//! - `load`: the layers — the file (or the defaults when it is absent and was not named),
//!   then `LIVEUSER_*` environment overrides — and the errors that name where a bad value
//!   came from;
//! - `validate`: what types alone cannot say, as a table of rules, one per key, each
//!   bound written once and its message derived from it.
//!
//! Every key can be overridden by an environment variable `LIVEUSER_<SECTION>_<KEY>`
//! (`LIVEUSER_WX_SECRET`, `LIVEUSER_LIMITS_LOGIN_PER_MIN`). Section names have no
//! underscore, so the split is unambiguous. Unknown keys in the file are refused, so a
//! typo never silently falls back to a default; unknown `LIVEUSER_*` variables are
//! returned as warnings for the caller to log.

mod load;
mod types;
mod validate;

pub use self::load::{ConfigError, ConfigSource, ENV_PREFIX, Loaded, default_path};
pub use self::types::{
    Config, LimitsConfig, LogConfig, LogFormat, ServerConfig, StorageBackend, StorageConfig,
    TokenConfig, WxConfig, WxMode,
};
pub use self::validate::MAX_LIFETIME_SECS;

/// Loads `text` as the file `test.toml` with `env` as the environment, for the tests of
/// each part.
#[cfg(test)]
fn load_for_test(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    Config::from_parts(
        "test.toml",
        Some(text),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}
