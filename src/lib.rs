//! liveuser: a self-hosted, single-binary user and login-state service for WeChat
//! mini-programs.
//!
//! A mini-program sends its `wx.login()` code to [`Wx.Login`](http::routes::login) and
//! gets liveuser's own access token (a JWT) and refresh token; with them it writes and
//! reads user profiles. Modules, from the edge inwards:
//!
//! - [`cli`]: the command line (`serve` and the admin subcommands).
//! - [`admin`]: the admin operations, their HTTP API, export and import.
//! - [`config`]: `liveuser.toml` and `LIVEUSER_*` overrides.
//! - [`app`]: wiring a configuration into a running server.
//! - [`http`]: the server loop (TLS, access log), the routes, JSON decoding and the error body.
//! - [`metrics`], [`openapi`]: `GET /metrics` and `GET /liveuser/openapi.json`.
//! - [`service`]: the four methods as plain Rust — login, rotation, access checks.
//! - [`token`]: access tokens (HS256 JWT, signed by a key ring) and refresh tokens.
//! - [`keys`]: where signing keys come from, and their rotation.
//! - [`limits`]: per-client-address rate limits on Login and RenewToken.
//! - [`wechat`]: the `jscode2session` exchange, real or mocked.
//! - [`store`]: the storage interface, its sled backend (codec, group commit) and its
//!   PostgreSQL backend (several instances on one database).
//! - [`model`]: validated identifiers and the records.
//! - [`clock`], [`secret`], [`logging`], [`context`]: injected time, secret wrapper, log
//!   setup, the per-request context of the access log.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod http;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod secret;
pub mod service;
pub mod store;
pub mod token;
pub mod wechat;
