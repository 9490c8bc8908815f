//! End-to-end tests: every test talks HTTP to a real server on a loopback port.

mod common;

mod abuse;
mod attacks;
mod bad_input;
mod crash;
mod durability;
mod fuzz;
mod key_rotation;
mod login;
mod rotation;
mod tokens;
mod upstream;
mod users;
