//! The kamal-proxy application: CLI, server wiring and the request stack.
//!
//! `main.rs` only calls [`cli::main`]; everything else lives here so integration tests can start
//! the application in-process.

pub mod cli;
pub mod run;
