//! Log setup: `tracing` with the configured level and format.
//!
//! Below `warn`, only liveuser's own events are logged, whatever `log.level` says. The
//! crates liveuser is built on print what passes through them at debug and trace: the
//! HTTP client the request URL (which carries the WeChat app secret and the code) and
//! WeChat's answer (with the session key), the storage engine the keys it reads and
//! writes (token hashes among them), the HTTP server and TLS their traffic. A cap
//! written as filter directives (`ureq=warn`) is overridden by a more specific one
//! (`ureq::run=debug`), so the cap is a second filter of its own that no directive
//! reaches. It also holds for crates added later.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogConfig, LogFormat};

/// Whether an event or span may be logged at all: liveuser's own at any level, any
/// other crate's at `warn` and `error` only.
fn allowed(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    *meta.level() <= Level::WARN || target == "liveuser" || target.starts_with("liveuser::")
}

/// Installs the global subscriber (stderr). Safe to call once per process.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = filter.and(filter_fn(allowed));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(target: &'static str, level: Level) -> bool {
        // A callsite per case: metadata needs one, and its fields do not matter here.
        struct Site;
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static SITE: Site = Site;
        let fields = tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&SITE));
        let meta = Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            fields,
            tracing::metadata::Kind::EVENT,
        );
        allowed(&meta)
    }

    #[test]
    fn other_crates_are_capped_at_warn_and_liveuser_is_not() {
        assert!(meta("liveuser", Level::TRACE));
        assert!(meta("liveuser::http::observe", Level::DEBUG));
        assert!(!meta("ureq::run", Level::DEBUG));
        assert!(!meta("ureq_proto::client", Level::TRACE));
        assert!(!meta("sled::tree", Level::TRACE));
        assert!(!meta("liveuserx", Level::INFO));
        assert!(meta("ureq::run", Level::WARN));
        assert!(meta("rustls::conn", Level::ERROR));
    }
}
