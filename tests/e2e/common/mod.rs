//! The test harness, one idea a file:
//!
//! - [`app`]: liveuser in this process ([`TestApp`]) on a loopback port 0, with a real
//!   database in a temp dir and a clock the test moves;
//! - [`binary`]: the `liveuser` executable ([`Binary`]), started on port 0 as an operator
//!   would, and its admin CLI run to completion ([`cli`]);
//! - [`postgres`]: the storage backend as a parameter — a test run through
//!   [`on_postgres`] (modules list theirs with [`on_postgres!`](crate::on_postgres)) gets
//!   the real PostgreSQL at `LIVEUSER_TEST_POSTGRES_URL` instead of sled, every
//!   configuration it builds ([`test_config`], [`binary_config`]) pointing at a schema of
//!   its own (one per temp dir), created for it and dropped after it, so tests run in
//!   parallel;
//! - [`wechat`]: a fake WeChat that is a real HTTP server on loopback ([`FakeWeChat`]);
//! - [`http`]: a blocking HTTP client (ureq) to talk to them as a mini-program would.
#![allow(dead_code)] // each test module uses a different part of the harness

pub mod app;
pub mod binary;
pub mod http;
pub mod postgres;
pub mod wechat;

pub use self::app::*;
pub use self::binary::*;
pub use self::http::*;
pub use self::postgres::*;
pub use self::wechat::*;
