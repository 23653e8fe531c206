//! The kamal-proxy application: CLI, server wiring and the request stack.
//!
//! `main.rs` only calls [`cli::main`]; everything else lives here so integration tests can start
//! the application in-process.
//!
//! The request path, outermost first (see `docs/architecture.md`): panic guard ([`serve`]),
//! request id / start stamp and access log ([`app`]), routing ([`app`]), then inside a service
//! ([`service`]): TLS check, pause gate, target claim, forwarding; failures become pages in one
//! place ([`rescue`]).

pub mod access_log;
pub mod app;
pub mod body;
pub mod buffering;
pub mod cli;
pub mod cookies;
pub mod error_pages;
pub mod http3;
pub mod logging;
pub mod metrics;
pub mod on_demand;
pub mod pages;
pub mod redirect;
pub mod rescue;
pub mod run;
pub mod serve;
pub mod service;
pub mod state;
pub mod tls;
