//! Upstream's command tree: every command, flag, default and help text.

use kamal_control::options::{
    DEFAULT_DEPLOY_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEALTH_CHECK_INTERVAL,
    DEFAULT_HEALTH_CHECK_PATH, DEFAULT_HEALTH_CHECK_TIMEOUT, DEFAULT_MAX_MEMORY_BUFFER_SIZE,
    DEFAULT_PAUSE_TIMEOUT, DEFAULT_TARGET_TIMEOUT, DEFAULT_WRITER_AFFINITY_TIMEOUT,
};

use super::command::{Action, Command, Positionals};
use super::flags::{Flag, Value};
use super::goparse;

/// Built-in defaults of `run` (before environment variables).
pub(crate) const DEFAULT_HTTP_PORT: i64 = 80;
/// Built-in HTTPS port.
pub(crate) const DEFAULT_HTTPS_PORT: i64 = 443;

/// Looks up an environment variable (injected so tests need not touch the process environment).
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Upstream's `findEnv`: `KAMAL_PROXY_<NAME>` when present (even empty), else `<NAME>`.
fn find_env(env: EnvLookup<'_>, name: &str) -> Option<String> {
    env(&format!("KAMAL_PROXY_{name}")).or_else(|| env(name))
}

/// An integer default from the environment; unparsable values give the built-in default.
pub(crate) fn env_int(env: EnvLookup<'_>, name: &str, default: i64) -> i64 {
    find_env(env, name)
        .and_then(|v| goparse::atoi(&v))
        .unwrap_or(default)
}

/// A boolean default from the environment; unparsable values give the built-in default.
pub(crate) fn env_bool(env: EnvLookup<'_>, name: &str, default: bool) -> bool {
    find_env(env, name)
        .and_then(|v| goparse::parse_bool(&v).ok())
        .unwrap_or(default)
}

fn service_command(
    name: &'static str,
    use_line: &'static str,
    short: &'static str,
    action: Action,
) -> Command {
    let mut command = Command::new(name, use_line, short);
    command.action = Some(action);
    command.positionals = Positionals::Exactly(1);
    command
}

fn strings(name: &'static str, usage: &'static str) -> Flag {
    Flag::new(name, Value::Strings(Vec::new()), usage)
}

fn string(name: &'static str, default: &str, usage: &'static str) -> Flag {
    Flag::new(name, Value::Str(default.to_string()), usage)
}

fn boolean(name: &'static str, default: bool, usage: &'static str) -> Flag {
    Flag::new(name, Value::Bool(default), usage)
}

fn duration(name: &'static str, default: kamal_control::GoDuration, usage: &'static str) -> Flag {
    Flag::new(name, Value::Duration(default), usage)
}

fn int(name: &'static str, default: i64, usage: &'static str) -> Flag {
    Flag::new(name, Value::Int(default), usage)
}

const DEPLOY_TIMEOUT_HELP: &str = "Maximum time to wait for the new target to become healthy";
const DEPLOY_DRAIN_HELP: &str =
    "Maximum time to allow existing connections to drain before removing old target";
const DRAIN_HELP: &str = "How long to allow in-flight requests to complete";

fn run_command(env: EnvLookup<'_>) -> Command {
    let mut run = Command::new("run", "run", "Run the server")
        .flag(boolean("debug", false, "Include debugging logs"))
        .flag(int("http-port", 0, "Port to serve HTTP traffic on"))
        .flag(int("https-port", 0, "Port to serve HTTPS traffic on"))
        .flag(int(
            "metrics-port",
            0,
            "Publish metrics on the specified port (default zero to disable)",
        ))
        .flag(boolean("http3", false, "Enable HTTP/3"));
    // The environment only changes the defaults (and so what help shows).
    let defaults = [
        ("debug", Value::Bool(env_bool(env, "DEBUG", false))),
        (
            "http-port",
            Value::Int(env_int(env, "HTTP_PORT", DEFAULT_HTTP_PORT)),
        ),
        (
            "https-port",
            Value::Int(env_int(env, "HTTPS_PORT", DEFAULT_HTTPS_PORT)),
        ),
        ("metrics-port", Value::Int(env_int(env, "METRICS_PORT", 0))),
    ];
    for (name, value) in defaults {
        run.flags.set_default(name, value);
    }
    run.action = Some(Action::Run);
    run
}

fn deploy_command(acme_cache_default: &str) -> Command {
    let mut deploy = service_command("deploy", "deploy <service>", "Deploy a target host", Action::Deploy)
        .flag(strings("target", "Target host(s) to deploy"))
        .flag(strings("read-target", "Read-only target host(s) to deploy"))
        .flag(strings("host", "Host(s) to serve this target on (empty for wildcard)"))
        .flag(strings("path-prefix", "Deploy the service below the specified path(s)"))
        .flag(boolean("strip-path-prefix", true, "With --path-prefix, strip prefix from request before forwarding"))
        .flag(boolean("tls", false, "Configure TLS for this target (requires a non-empty host)"))
        .flag(string("tls-on-demand-url", "", "Will make an HTTP request to the given URL, asking whether a host is allowed to have a certificate issued"))
        .flag(boolean("tls-staging", false, "Use Let's Encrypt staging environment for certificate provisioning"))
        .flag(string("tls-acme-directory", "", "ACME directory URL of the certificate authority (overrides --tls-staging)"))
        .flag(string("tls-certificate-path", "", "Configure custom TLS certificate path (PEM format)"))
        .flag(string("tls-private-key-path", "", "Configure custom TLS private key path (PEM format)"))
        .flag(Flag::new("tls-acme-cache-path", Value::Str(acme_cache_default.to_string()), "Location to store ACME assets"))
        .flag(boolean("tls-redirect", true, "Redirect HTTP traffic to HTTPS"))
        .flag(string("canonical-host", "", "Redirect all requests to this host (e.g., force root or www)"))
        .flag(duration("deploy-timeout", DEFAULT_DEPLOY_TIMEOUT, DEPLOY_TIMEOUT_HELP))
        .flag(duration("drain-timeout", DEFAULT_DRAIN_TIMEOUT, DEPLOY_DRAIN_HELP))
        .flag(boolean("force", false, "Skip health checks and force deployment"))
        .flag(duration("health-check-interval", DEFAULT_HEALTH_CHECK_INTERVAL, "Interval between health checks"))
        .flag(duration("health-check-timeout", DEFAULT_HEALTH_CHECK_TIMEOUT, "Time each health check must complete in"))
        .flag(string("health-check-path", DEFAULT_HEALTH_CHECK_PATH, "Path to check for health"))
        .flag(int("health-check-port", 0, "Port to check for health (default matches target port)"))
        .flag(string("health-check-host", "", "Host header to send with health check requests"))
        .flag(duration("writer-affinity-timeout", DEFAULT_WRITER_AFFINITY_TIMEOUT, "Time after a write before read requests will be routed to readers"))
        .flag(boolean("read-target-websockets", false, "Route WebSocket traffic to read targets, when available"))
        .flag(duration("target-timeout", DEFAULT_TARGET_TIMEOUT, "Maximum time to wait for the target server to respond when serving requests"))
        .flag(boolean("buffer-requests", false, "Buffer requests before forwarding to target"))
        .flag(boolean("buffer-responses", false, "Buffer responses before forwarding to client"))
        .flag(int("buffer-memory", DEFAULT_MAX_MEMORY_BUFFER_SIZE, "Max size of memory buffer"))
        .flag(int("max-request-body", 0, "Max size of request body when buffering (default of 0 means unlimited)"))
        .flag(int("max-response-body", 0, "Max size of response body when buffering (default of 0 means unlimited)"))
        .flag(string("error-pages", "", "Path to custom error pages"))
        .flag(strings("log-request-header", "Additional request header to log (may be specified multiple times)"))
        .flag(strings("log-response-header", "Additional response header to log (may be specified multiple times)"))
        .flag(strings("exclude-metrics-path", "Request path(s) to exclude from Prometheus metrics (may be specified multiple times)"))
        .flag(boolean("forward-headers", false, "Forward X-Forwarded headers to target (default false if TLS enabled; otherwise true)"))
        .flag(string("client-ip-header", "", "Request header containing the original client IP; used to populate X-Forwarded-For when present"))
        .flag(boolean("scope-cookie-paths", false, "Scope cookie paths to match path prefix"));
    deploy.required = &["target"];
    deploy.together = &["tls-certificate-path", "tls-private-key-path"];
    deploy
}

fn rollout_command() -> Command {
    let mut deploy = service_command(
        "deploy",
        "deploy <service>",
        "Deploy the rollout target",
        Action::RolloutDeploy,
    )
    .flag(strings("target", "Target host(s) to deploy"))
    .flag(strings("read-target", "Read-only target host(s) to deploy"))
    .flag(duration(
        "deploy-timeout",
        DEFAULT_DEPLOY_TIMEOUT,
        DEPLOY_TIMEOUT_HELP,
    ))
    .flag(duration(
        "drain-timeout",
        DEFAULT_DRAIN_TIMEOUT,
        DEPLOY_DRAIN_HELP,
    ));
    deploy.required = &["target"];
    let mut set = service_command(
        "set",
        "set <service>",
        "Set traffic split for rollout",
        Action::RolloutSet,
    )
    .flag(int(
        "percent",
        0,
        "Percentage of traffic to send to the new target",
    ))
    .flag(strings("list", "Rollout to specific values"));
    set.one_required = &["percent", "list"];
    let stop = service_command(
        "stop",
        "stop <service>",
        "Stops rollout of a service",
        Action::RolloutStop,
    );

    let mut rollout = Command::new("rollout", "rollout", "Manage rollout settings");
    rollout.children = vec![deploy, set, stop];
    rollout
}

/// The whole tree. `acme_cache_default` is the client-computed default of
/// `deploy --tls-acme-cache-path` (`<data dir>/certs`).
pub(crate) fn build(env: EnvLookup<'_>, acme_cache_default: &str) -> Command {
    let mut remove = service_command(
        "remove",
        "remove <service>",
        "Remove the service",
        Action::Remove,
    );
    remove.aliases = &["rm"];
    let pause = service_command("pause", "pause <service>", "Pause a service", Action::Pause)
        .flag(duration("drain-timeout", DEFAULT_DRAIN_TIMEOUT, DRAIN_HELP))
        .flag(duration(
            "max-pause",
            DEFAULT_PAUSE_TIMEOUT,
            "How long to enqueue requests before shedding load",
        ));
    let stop = service_command("stop", "stop <service>", "Stop a service", Action::Stop)
        .flag(duration("drain-timeout", DEFAULT_DRAIN_TIMEOUT, DRAIN_HELP))
        .flag(string(
            "message",
            "",
            "Message to display to clients while stopped",
        ));
    let resume = service_command(
        "resume",
        "resume <service>",
        "Resume a service",
        Action::Resume,
    );
    let mut list = Command::new("list", "list", "List the services currently running")
        .flag(boolean("json", false, "Print the services as JSON"));
    list.aliases = &["ls"];
    list.action = Some(Action::List);
    list.positionals = Positionals::None;

    let mut help = Command::new("help", "help [command]", "Help about any command");
    help.long = "Help provides help for any command in the application.\n\
                 Simply type kamal-proxy help [path to command] for full details."
        .to_string();
    help.action = Some(Action::Help);
    help.is_help = true;

    let mut root = Command::new(
        "kamal-proxy",
        "kamal-proxy",
        "HTTP proxy for zero downtime deployments",
    );
    root.version = Some(env!("CARGO_PKG_VERSION"));
    // Upstream's order of AddCommand (suggestions list commands in this order); help is last.
    root.children = vec![
        run_command(env),
        deploy_command(acme_cache_default),
        remove,
        pause,
        stop,
        resume,
        list,
        rollout_command(),
        help,
    ];
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn prefixed_env_wins_even_when_invalid() {
        let env = env_of(&[("KAMAL_PROXY_HTTP_PORT", "abc"), ("HTTP_PORT", "1234")]);
        assert_eq!(env_int(&env, "HTTP_PORT", 80), 80);
        let env = env_of(&[("KAMAL_PROXY_HTTP_PORT", ""), ("HTTP_PORT", "1234")]);
        assert_eq!(env_int(&env, "HTTP_PORT", 80), 80);
        let env = env_of(&[("HTTP_PORT", "1234")]);
        assert_eq!(env_int(&env, "HTTP_PORT", 80), 1234);
        let env = env_of(&[("KAMAL_PROXY_HTTP_PORT", "8080"), ("HTTP_PORT", "1234")]);
        assert_eq!(env_int(&env, "HTTP_PORT", 80), 8080);
        let env = env_of(&[("HTTP_PORT", "0x10")]);
        assert_eq!(
            env_int(&env, "HTTP_PORT", 80),
            80,
            "env ints are plain base 10"
        );
    }

    #[test]
    fn env_booleans() {
        assert!(env_bool(&env_of(&[("DEBUG", "T")]), "DEBUG", false));
        assert!(!env_bool(
            &env_of(&[("KAMAL_PROXY_DEBUG", "nope"), ("DEBUG", "1")]),
            "DEBUG",
            false
        ));
        assert!(env_bool(
            &env_of(&[("KAMAL_PROXY_DEBUG", "true")]),
            "DEBUG",
            false
        ));
        assert!(!env_bool(&env_of(&[]), "DEBUG", false));
    }

    #[test]
    fn help_shows_env_defaults() {
        let env = env_of(&[("HTTP_PORT", "1234"), ("KAMAL_PROXY_DEBUG", "1")]);
        let root = build(&env, "/home/x/.config/kamal-proxy/certs");
        let run = root.children.iter().find(|c| c.name == "run").unwrap();
        let text = super::super::command::help(&[&root, run]);
        assert!(
            text.contains("--http-port int      Port to serve HTTP traffic on (default 1234)"),
            "{text}"
        );
        assert!(
            text.contains("--debug              Include debugging logs (default true)"),
            "{text}"
        );
        assert!(
            text.contains("--https-port int     Port to serve HTTPS traffic on (default 443)"),
            "{text}"
        );
    }
}
