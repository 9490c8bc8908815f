//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! One [`Metrics`] per running server, with its own registry (not the process-global
//! one), so several servers in one process — the tests — each count only their own
//! traffic. The HTTP layer records requests, the service records rotations, reuse and
//! WeChat calls, the store reports flush latency.
//!
//! Users and live sessions are gauges. sled can only count a tree by scanning it, so
//! they are not counted per scrape: a census scans both trees in the background at start
//! (the gauges read 0 until it finishes) and again at most once every
//! [`CENSUS_INTERVAL`] when `/metrics` is scraped, and in between the service adjusts
//! them on each event it sees (a first login adds a user, a login adds a session, a
//! revocation removes it). Sessions that simply expire are
//! noticed at the next census.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The shortest time between two background counts of users and sessions.
pub(crate) const CENSUS_INTERVAL: Duration = Duration::from_secs(60);

/// Latency buckets in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    wechat_calls: IntCounterVec,
    wechat_seconds: HistogramVec,
    sessions_live: IntGauge,
    users: IntGauge,
    rotations: IntCounter,
    reuse_detections: IntCounter,
    key_leaks: IntCounter,
    flush_seconds: Histogram,
    flush_writers: Histogram,
    census: Census,
    enabled: AtomicBool,
}

#[derive(Default)]
struct Census {
    running: AtomicBool,
    last: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "liveuser_http_requests_total",
                "HTTP requests answered, by API method, error code (\"ok\" on success) and status.",
            ),
            &["method", "code", "status"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "liveuser_http_request_duration_seconds",
                "Time from the request's headers to its answer, by API method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        let wechat_calls = IntCounterVec::new(
            Opts::new(
                "liveuser_wechat_calls_total",
                "Code exchanges with WeChat (jscode2session), by outcome and WeChat errcode \
                 (\"0\" on success, \"none\" when WeChat gave no errcode, \"other\" for an \
                 errcode liveuser does not handle specially).",
            ),
            &["outcome", "errcode"],
        )
        .expect("valid metric");
        let wechat_seconds = HistogramVec::new(
            HistogramOpts::new(
                "liveuser_wechat_call_duration_seconds",
                "Duration of one code exchange with WeChat, including its one retry, by outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let sessions_live = IntGauge::new(
            "liveuser_sessions_live",
            "Sessions that can be used now (recounted at most once a minute).",
        )
        .expect("valid metric");
        let users = IntGauge::new(
            "liveuser_users",
            "User records stored (recounted at most once a minute).",
        )
        .expect("valid metric");
        let rotations = IntCounter::new(
            "liveuser_refresh_rotations_total",
            "Refresh tokens rotated by RenewToken.",
        )
        .expect("valid metric");
        let reuse_detections = IntCounter::new(
            "liveuser_refresh_reuse_detected_total",
            "Retired refresh tokens presented again; each revoked its session family.",
        )
        .expect("valid metric");
        let key_leaks = IntCounter::new(
            "liveuser_refresh_key_leak_detected_total",
            "Refresh tokens with a valid tag that no rotation issued (made with the refresh \
             key outside liveuser); each revoked its session family.",
        )
        .expect("valid metric");
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "liveuser_storage_flush_duration_seconds",
                "Duration of one group-commit flush (write and fsync) of the database.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let flush_writers = Histogram::with_opts(
            HistogramOpts::new(
                "liveuser_storage_flush_batch_writers",
                "Writers one group-commit flush made durable (the batch size).",
            )
            .buckets(vec![
                1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0,
            ]),
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(wechat_calls.clone()),
            Box::new(wechat_seconds.clone()),
            Box::new(sessions_live.clone()),
            Box::new(users.clone()),
            Box::new(rotations.clone()),
            Box::new(reuse_detections.clone()),
            Box::new(key_leaks.clone()),
            Box::new(flush_seconds.clone()),
            Box::new(flush_writers.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            request_seconds,
            wechat_calls,
            wechat_seconds,
            sessions_live,
            users,
            rotations,
            reuse_detections,
            key_leaks,
            flush_seconds,
            flush_writers,
            census: Census::default(),
            enabled: AtomicBool::new(true),
        }
    }

    /// Turns `GET /metrics` on or off (`server.metrics`).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether `GET /metrics` is served.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Records one answered HTTP request.
    pub fn request(&self, method: &str, code: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[method, code, status_label(status)])
            .inc();
        self.request_seconds
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }

    /// Records one exchange with the real WeChat: how it ended (`ok` or the failure's
    /// kind) and WeChat's errcode, if it gave one.
    pub fn wechat_call(&self, outcome: &'static str, errcode: Option<i64>, elapsed: Duration) {
        self.wechat_calls
            .with_label_values(&[outcome, errcode_label(errcode)])
            .inc();
        self.wechat_seconds
            .with_label_values(&[outcome])
            .observe(elapsed.as_secs_f64());
    }

    /// A refresh token was rotated.
    pub fn rotated(&self) {
        self.rotations.inc();
    }

    /// A retired refresh token was presented again.
    pub fn reuse_detected(&self) {
        self.reuse_detections.inc();
    }

    /// A refresh token made with the refresh key, not by a rotation, was presented.
    pub fn refresh_key_leak_detected(&self) {
        self.key_leaks.inc();
    }

    /// A first login created a user.
    pub fn user_created(&self) {
        self.users.inc();
    }

    /// Sessions were opened (positive) or revoked (negative).
    pub fn sessions_changed(&self, delta: i64) {
        self.sessions_live.add(delta);
    }

    /// One group-commit flush took `elapsed` and made `writers` writers durable.
    pub fn flushed(&self, elapsed: Duration, writers: usize) {
        self.flush_seconds.observe(elapsed.as_secs_f64());
        self.flush_writers.observe(writers as f64);
    }

    /// Sets the counted users and live sessions.
    pub fn set_census(&self, users: u64, sessions_live: u64) {
        self.users.set(i64::try_from(users).unwrap_or(i64::MAX));
        self.sessions_live
            .set(i64::try_from(sessions_live).unwrap_or(i64::MAX));
    }

    /// Whether a census is due: none ran in the last [`CENSUS_INTERVAL`] and none is
    /// running. A `true` answer claims the census; the caller must call
    /// [`Metrics::census_done`] when it finishes.
    pub fn claim_census(&self, now: Instant) -> bool {
        let last = self.census.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < CENSUS_INTERVAL) {
            return false;
        }
        !self.census.running.swap(true, Ordering::AcqRel)
    }

    /// Ends a census claimed with [`Metrics::claim_census`].
    pub fn census_done(&self, at: Instant) {
        *self.census.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        self.census.running.store(false, Ordering::Release);
    }

    /// Makes the next scrape recount (after an import).
    pub fn census_stale(&self) {
        *self.census.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes into a Vec");
        out
    }
}

/// A `&'static str` for the statuses liveuser answers with, so labels need no allocation.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// The media type of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `errcode` label of a WeChat call. WeChat's errcode is any integer the upstream
/// chooses; as a label it would make a new time series per value, so only the codes
/// liveuser acts on are kept and the rest are counted together as `other` (the message
/// of the `unavailable` answer still names the real code).
fn errcode_label(errcode: Option<i64>) -> &'static str {
    match errcode {
        None => "none",
        Some(0) => "0",
        Some(-1) => "-1",
        Some(40029) => "40029",
        Some(40163) => "40163",
        Some(45011) => "45011",
        Some(40226) => "40226",
        Some(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_show_up_in_the_text_format_with_their_labels() {
        let m = Metrics::new();
        m.request("Login", "ok", 200, Duration::from_millis(3));
        m.request("Login", "ok", 200, Duration::from_millis(3));
        m.request("AddUser", "unauthenticated", 401, Duration::from_millis(1));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                r#"liveuser_http_requests_total{code="ok",method="Login",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"liveuser_http_requests_total{code="unauthenticated",method="AddUser",status="401"} 1"#
        ));
        assert!(text.contains(r#"liveuser_http_request_duration_seconds_count{method="Login"} 2"#));
    }

    #[test]
    fn wechat_calls_are_labelled_with_outcome_and_errcode() {
        let m = Metrics::new();
        m.wechat_call("invalid_code", Some(40163), Duration::ZERO);
        m.wechat_call("unavailable", Some(40001), Duration::ZERO);
        m.wechat_call("ok", Some(0), Duration::ZERO);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                r#"liveuser_wechat_calls_total{errcode="40163",outcome="invalid_code"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"liveuser_wechat_calls_total{errcode="other",outcome="unavailable"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"liveuser_wechat_calls_total{errcode="0",outcome="ok"} 1"#));
    }

    #[test]
    fn unknown_wechat_errcodes_share_one_label_so_the_series_stay_few() {
        let m = Metrics::new();
        for code in [40001, 40125, -2, i64::MIN, i64::MAX, 99_999_999] {
            m.wechat_call("unavailable", Some(code), Duration::ZERO);
        }
        m.wechat_call("unavailable", Some(-1), Duration::ZERO);
        m.wechat_call("invalid_code", Some(40029), Duration::ZERO);
        m.wechat_call("rate_limited", Some(45011), Duration::ZERO);
        m.wechat_call("high_risk", Some(40226), Duration::ZERO);
        m.wechat_call("not_configured", None, Duration::ZERO);
        let text = String::from_utf8(m.render()).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("liveuser_wechat_calls_total{"))
            .collect();
        for expected in [
            r#"liveuser_wechat_calls_total{errcode="other",outcome="unavailable"} 6"#,
            r#"liveuser_wechat_calls_total{errcode="-1",outcome="unavailable"} 1"#,
            r#"liveuser_wechat_calls_total{errcode="40029",outcome="invalid_code"} 1"#,
            r#"liveuser_wechat_calls_total{errcode="45011",outcome="rate_limited"} 1"#,
            r#"liveuser_wechat_calls_total{errcode="40226",outcome="high_risk"} 1"#,
            r#"liveuser_wechat_calls_total{errcode="none",outcome="not_configured"} 1"#,
        ] {
            assert!(series.contains(&expected), "{expected} in {series:#?}");
        }
        assert_eq!(series.len(), 6, "{series:#?}");
    }

    #[test]
    fn a_census_is_claimed_once_per_interval() {
        let m = Metrics::new();
        let t0 = Instant::now();
        assert!(m.claim_census(t0));
        assert!(!m.claim_census(t0), "one census at a time");
        m.census_done(t0);
        assert!(!m.claim_census(t0 + Duration::from_secs(1)));
        assert!(m.claim_census(t0 + CENSUS_INTERVAL));
    }
}
