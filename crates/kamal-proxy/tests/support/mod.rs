//! Helpers shared by the data-plane integration tests (routing, deploy, streaming, bad input,
//! state). Each test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

pub use test_support::client::{self, Client};
pub use test_support::{eventually, OutputExt, Proxy, Reply, Upstream};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kamal-proxy");

/// Starts `kamal-proxy run` on ephemeral ports with a temporary HOME.
pub fn start_proxy() -> Proxy {
    Proxy::start(BIN)
}

/// `GET` through the proxy's HTTP port; panics on a transport error (the proxy must answer).
pub async fn get(proxy: &Proxy, host: &str, path: &str) -> Reply {
    client::get(proxy.http_port(), host, path)
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path} through the proxy failed: {e}"))
}

/// The name of the upstream that answered `GET host path`, or the status if it was not a 200.
pub async fn who_answers(proxy: &Proxy, host: &str, path: &str) -> Result<String, u16> {
    let reply = get(proxy, host, path).await;
    match (reply.status.as_u16(), reply.upstream()) {
        (200, Some(name)) => Ok(name.to_owned()),
        (status, _) => Err(status),
    }
}

/// The request target (`path?query`) the upstream saw for `GET host path` through the proxy.
pub async fn upstream_sees(proxy: &Proxy, host: &str, path: &str) -> String {
    let reply = get(proxy, host, path).await;
    assert_eq!(reply.status, 200, "GET {host}{path}: {}", reply.text());
    reply.echo().expect("an upstream echo").uri()
}

/// Removes ANSI colour sequences (the `list` table always has them).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `[`, parameters, and the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Rows of `kamal-proxy list` as whitespace-separated cells, header included.
pub fn list_rows(proxy: &Proxy) -> Vec<Vec<String>> {
    let out = proxy.cli(&["list"]);
    assert_eq!(out.code(), Some(0), "list failed: {}", out.stderr_text());
    strip_ansi(&out.stdout_text())
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Polls until `GET host path` is answered by `upstream`, for at most `timeout`.
pub async fn wait_until_served_by(
    proxy: &Proxy,
    host: &str,
    path: &str,
    upstream: &str,
    timeout: Duration,
) -> bool {
    eventually(timeout, || async {
        matches!(client::get(proxy.http_port(), host, path).await,
            Ok(reply) if reply.status == 200 && reply.upstream() == Some(upstream))
    })
    .await
}
