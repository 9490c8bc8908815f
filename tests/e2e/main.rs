//! End-to-end tests: every test talks HTTP to a real server on a loopback port.

mod common;

mod admin;
mod backup;
mod bad_input;
mod durability;
mod login;
mod ops;
mod rotation;
mod tokens;
mod users;
