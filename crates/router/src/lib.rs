//! Host and path-prefix routing for kamal-proxy.
//!
//! A [`RouteTable`] maps `(host, path prefix)` bindings to values of any type `T`. Lookups follow
//! kamal-proxy's rules: exact host, then one-label `*.wildcard`, then the default host, then the
//! longest matching path prefix on a segment boundary. The crate does no I/O.
