//! `kamal-proxy run`: the long-running server (spec §1.6).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::metrics::Metrics;
use crate::serve;

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = runtime_builder(parallelism)
        .build()
        .map_err(|e| format!("unable to start the runtime: {e}"))?;
    let result = runtime.block_on(serve_until_signal(config));
    // Dropping the runtime stops its workers, which write their last buffered log lines.
    drop(runtime);
    // With one core the calling thread was the worker; it has no stop hook. Then every line
    // still queued for the log writer goes out before the process exits.
    crate::logging::finish();
    result
}

/// The runtime for `parallelism` usable cores. On one core (a container limited to one CPU,
/// or a pinned process) a single-threaded scheduler does the same work without the cross-thread
/// wake-ups and atomics of the work-stealing one; with more cores the work-stealing one
/// spreads connections over them.
fn runtime_builder(parallelism: usize) -> tokio::runtime::Builder {
    let mut builder = if parallelism <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        // Workers batch their log lines and write them whenever they go idle or stop.
        .on_thread_park(crate::logging::worker_idle)
        .on_thread_stop(crate::logging::flush_thread);
    builder
}

async fn serve_until_signal(config: RunConfig) -> Result<(), String> {
    crate::logging::init(config.debug);
    let env = kamal_control::paths::ProcessEnv;
    // When disabled nothing is tracked (spec §12.1).
    let metrics = (config.metrics_port != 0).then(Metrics::new);
    let app = App::with_metrics(kamal_control::paths::state_file_path(&env), metrics.clone());
    let tls = Arc::clone(app.tls());
    // Path-form on-demand TLS checks are asked through the app's own services.
    crate::on_demand::install(&app);
    app.restore();

    let metrics_listener = match &metrics {
        None => {
            tracing::debug!("Metrics server disabled");
            None
        }
        Some(_) => {
            let listener = serve::bind(config.metrics_port).await?;
            tracing::info!(address = %format!(":{}", config.metrics_port), "Metrics enabled");
            Some(listener)
        }
    };

    let http = serve::bind(config.http_port).await?;
    let https = serve::bind(config.https_port).await?;
    let http_port = http
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(config.http_port);
    let https_port = https
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(config.https_port);

    // UDP at the HTTPS listener's port (the bound one when configured as 0).
    let http3 = if config.http3 {
        let quic = crate::http3::server_config(Arc::clone(tls.store()))?;
        Some(crate::http3::Http3Listener::bind(https_port, quic)?)
    } else {
        None
    };
    let alt_svc = http3.as_ref().map(|_| crate::http3::alt_svc(https_port));

    let socket = kamal_control::paths::socket_path(&env);
    let control =
        kamal_control::server::ControlListener::bind(&socket).map_err(|e| e.to_string())?;

    let stop = CancellationToken::new();
    let connections = serve::Connections::new();
    let mut tasks = tokio::task::JoinSet::new();
    let http_loop = tokio::spawn(serve::accept_loop(
        http,
        false,
        config.http_port,
        Arc::clone(&app),
        connections.clone(),
        stop.clone(),
    ));
    let https_loop = {
        let (tls, app, connections, stop) = (
            Arc::clone(&tls),
            Arc::clone(&app),
            connections.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            serve::tls_accept_loop(
                https,
                config.https_port,
                tls,
                app,
                connections,
                stop,
                alt_svc,
            )
            .await
        })
    };
    let metrics_loop = match (metrics_listener, metrics) {
        (Some(listener), Some(metrics)) => Some(tokio::spawn(serve::accept_loop(
            listener,
            false,
            config.metrics_port,
            crate::metrics::Endpoint::new(metrics, Arc::clone(&app)),
            connections.clone(),
            stop.clone(),
        ))),
        _ => None,
    };
    let http3 = http3.map(|l| l.serve(config.https_port, Arc::clone(&app), stop.clone()));
    {
        let stop = stop.clone();
        let app = Arc::clone(&app);
        tasks.spawn(async move {
            if let Err(error) = control.serve(app, stop.cancelled_owned()).await {
                tracing::error!(error = %error, "Error accepting RPC connection");
            }
        });
    }

    tracing::info!(http = http_port, https = https_port, "Server started");
    wait_for_signal().await;

    stop.cancel();
    let _ = http_loop.await;
    let _ = https_loop.await;
    if let Some(metrics_loop) = metrics_loop {
        let _ = metrics_loop.await;
    }
    let http3 = async {
        if let Some(http3) = http3 {
            http3.shutdown().await;
        }
    };
    // One shared deadline for the TCP listeners and HTTP/3 (spec §1.6).
    let both = async { futures_util::join!(connections.shutdown(), http3) };
    if tokio::time::timeout(SHUTDOWN_GRACE, both).await.is_err() {
        tracing::warn!("Closing active connections");
    }
    tasks.shutdown().await;
    // A command cut short by the signal may have a state write under way: it finishes (on its
    // blocking thread) before the process exits, so the file is the old or the new one.
    app.finish_state_writes().await;
    tracing::info!("Server stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_core_gets_the_single_threaded_scheduler() {
        for (parallelism, flavor) in [
            (1, RuntimeFlavor::CurrentThread),
            (2, RuntimeFlavor::MultiThread),
        ] {
            let runtime = runtime_builder(parallelism).build().unwrap();
            let (seen, spawned) = runtime.block_on(async {
                let seen = tokio::runtime::Handle::current().runtime_flavor();
                // Spawned tasks and timers run on either flavour.
                let spawned = tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    7
                });
                (seen, spawned.await.unwrap())
            });
            assert_eq!(seen, flavor);
            assert_eq!(spawned, 7);
        }
    }
}
