//! `kamal-proxy run`: the long-running server.

/// Settings of `kamal-proxy run`, resolved from flags and environment variables by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Include debugging logs.
    pub debug: bool,
    /// Port to serve HTTP traffic on (0 = any free port).
    pub http_port: u16,
    /// Port to serve HTTPS traffic on (0 = any free port).
    pub https_port: u16,
    /// Port to publish metrics on (0 = disabled).
    pub metrics_port: u16,
    /// Serve HTTP/3 on the HTTPS port.
    pub http3: bool,
}

/// Runs the server until SIGTERM or SIGINT. The error is printed by the CLI as `Error: <error>`.
pub fn run(config: RunConfig) -> Result<(), String> {
    let _ = config;
    Err("the server is not implemented yet".to_string())
}
