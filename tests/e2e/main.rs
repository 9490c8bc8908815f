//! End-to-end tests: every test talks HTTP to a real server on a loopback port.

mod common;

mod abuse;
mod admin;
mod attacks;
mod backup;
mod bad_input;
mod crash;
mod durability;
mod file_modes;
mod forward_auth;
mod fuzz;
mod jwks;
mod key_rotation;
mod login;
mod nginx;
mod ops;
mod refresh_keys;
mod rotation;
mod several;
mod shared_database;
mod tokens;
mod upgrade;
mod upstream;
mod users;
mod verify_offline;
