//! Log setup: `tracing` with the configured level and format.
//!
//! The HTTP client's own logs are capped at `warn` whatever the level: at debug it would
//! print request URLs, and the WeChat request URL carries the app secret.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Directives appended to every filter.
const QUIET: &str = "ureq=warn,ureq_proto=warn,rustls=warn,hyper=warn,hyper_util=warn,sled=warn";

/// Installs the global subscriber (stderr). Safe to call once per process.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(format!("{},{QUIET}", config.level))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
