//! Host and path-prefix routing for kamal-proxy.
//!
//! A [`RouteTable`] maps `(host, path prefix)` bindings to values of any type `T` (in the
//! proxy: services). Lookups follow kamal-proxy's rules (spec §3): the port is dropped from
//! the host; the exact host is tried, then the one-label wildcard `*.rest-of-host`, then the
//! default host `""`, and the first of those with bindings is final; within it the longest
//! prefix that matches the percent-decoded path on a segment boundary wins. Host names are
//! compared case-insensitively and one trailing dot is ignored (our deliberate difference
//! from upstream). The crate does no I/O.
//!
//! Tables are immutable: a deploy builds a new one with [`RouteTableBuilder`] (which refuses
//! conflicting bindings) and swaps it into [`SharedRoutes`], which requests read lock-free.
//!
//! ```
//! use kamal_router::{upstream_path, RouteError, RouteTable, SharedRoutes};
//!
//! let mut builder = RouteTable::builder();
//! builder.insert("web", &["app.example.com".into()], &["/".into()], "web")?;
//! builder.insert("api", &["app.example.com".into()], &["/api".into()], "api")?;
//! builder.insert("fallback", &[], &[], "fallback")?;
//! let routes = SharedRoutes::new(builder.build());
//!
//! let table = routes.load();
//! let found = table.lookup("App.Example.com:443", "/api/users/1").expect("routed");
//! assert_eq!(*found.value, "api");
//! assert_eq!(upstream_path("/api/users/1", found.prefix, true), "/users/1");
//! assert_eq!(table.lookup("other.test", "/").map(|m| *m.value), Some("fallback"));
//! // The app.example.com level is final: no fall-back to the default service.
//! assert!(table.lookup("app.example.com", "*").is_none());
//!
//! // A second default service at `/` conflicts with `fallback`.
//! let mut builder = RouteTable::builder();
//! builder.insert("fallback", &[], &[], ())?;
//! assert_eq!(
//!     builder.insert("other", &[], &[], ()),
//!     Err(RouteError::Conflict { owner: "fallback".into() })
//! );
//! # Ok::<(), RouteError>(())
//! ```

mod error;
mod host;
mod path;
mod shared;
mod table;

pub use error::RouteError;
pub use host::host_without_port;
pub use path::{routed_path, upstream_path, validate_escapes};
pub use shared::{RoutesGuard, SharedRoutes};
pub use table::{BindingRef, RouteMatch, RouteTable, RouteTableBuilder};
