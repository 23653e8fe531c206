//! Test helpers for kamal-proxy: real upstream HTTP servers on loopback, a harness that drives the
//! real `kamal-proxy` binary, HTTP / raw TCP / SSE / WebSocket clients and a polling helper.
//!
//! Everything binds or connects to `127.0.0.1` only, on ports chosen by the OS.
//!
//! ```no_run
//! # async fn demo() {
//! use test_support::{client, Upstream};
//! let upstream = Upstream::start("web-1");
//! let reply = client::get(upstream.addr().port(), "app.test", "/hello?x=1").await.unwrap();
//! assert_eq!(reply.status, 200);
//! assert_eq!(reply.echo().unwrap().path, "/hello");
//! # }
//! ```

pub mod client;
pub mod dns;
mod error;
mod eventually;
pub mod pebble;
pub mod proxy;
pub mod tls;
pub mod upstream;

pub use client::{Client, Echo, Reply};
pub use error::Error;
pub use eventually::{eventually, eventually_some};
pub use proxy::{OutputExt, Proxy, ProxyBuilder};
pub use upstream::{LoggedRequest, Upstream, UpstreamBuilder};
