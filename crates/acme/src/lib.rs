//! TLS certificates for kamal-proxy: ACME (rustls-acme), static PEM files, on-demand issuance and
//! the per-handshake SNI resolver.
//!
//! Not implemented yet: this crate lands with the "TLS" issue. It exists now so the workspace
//! layout is final and the binary can depend on it.
