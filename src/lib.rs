//! liveuser: a self-hosted, single-binary user and login-state service for WeChat
//! mini-programs.
//!
//! A mini-program sends its `wx.login()` code to `Wx.Login` and gets liveuser's own
//! access token (a JWT) and refresh token; with them it writes and reads user profiles.
//!
//! The modules form layers; each imports only from layers below it (no cycles):
//!
//! 1. [`cli`] (the command line: clap types, dispatch, the export and import files) →
//!    [`app`] (wiring a configuration into a running server) → `admin` (one file per
//!    operation under `admin/ops/`, the backend that runs them in process or through
//!    the running server, their HTTP API and client, the export format with its writer
//!    and reader under `admin/backup/`);
//! 2. `http` (server loop, routes, JSON, the one list of error codes, the OpenAPI
//!    document) → `limits` (rate limits);
//! 3. [`service`] (the four methods: login, rotation, access checks) → `keys` (signing
//!    and refresh keys and their rotation), [`token`] (JWTs signed ES256 or HS256 with their JWKS, refresh tokens), [`wechat`] (the code
//!    exchange), `context` (the access log's per-request uid);
//! 4. [`store`] (the `Store` trait, the sled and PostgreSQL backends, codec, group
//!    commit, caches) →
//!    [`model`] (validated identifiers and records), [`config`] (`liveuser.toml` and
//!    `LIVEUSER_*`: the types and defaults, the layered loader, the validation rules);
//! 5. leaves: `primitives` (randomness, SHA-256, hex), [`secret`], [`clock`], `metrics`;
//!    [`logging`] reads only `config`.
//!
//! The public modules are what an embedder or a test needs: configure, open storage,
//! build the service, start the server. Everything else is crate-private, so the
//! compiler reports dead code (`unreachable_pub` is on). The test clock
//! ([`clock::OffsetClock`]) and the decoding entry points for the fuzz targets
//! (`fuzzing`) are public only for the tests and hidden from the documentation.
#![warn(unreachable_pub)]

mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
mod context;
mod http;
mod keys;
mod limits;
pub mod logging;
mod metrics;
pub mod model;
mod primitives;
pub mod secret;
pub mod service;
pub mod store;
pub mod token;
pub mod wechat;

/// Request decoding and the error vocabulary, for the fuzz targets (`fuzz/`) and the
/// property tests only: not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::error::{ApiError, ErrorCode};
    pub use crate::http::wire::{add_user, login, query_user, renew};
}
