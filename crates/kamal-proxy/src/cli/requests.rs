//! Turning parsed flags into control requests (and `run`'s settings), with the client-side
//! validations in upstream's order.

use kamal_control::options::ACME_STAGING_DIRECTORY;
use kamal_control::{
    DeployRequest, HealthCheckConfig, Request, RolloutDeployRequest, ServiceOptions, TargetOptions,
};

use super::command::{check_required, Command};
use super::error::CliError;
use super::flags::Parsed;
use crate::run::RunConfig;
use kamal_control::quote::quote;

/// `deploy`: pre-run checks (§2.3 steps 1–4), then required flags and flag groups, then the
/// staging ACME directory.
pub(crate) fn deploy(
    command: &Command,
    parsed: &Parsed,
    service: &str,
) -> Result<Request, CliError> {
    // Presence, not value, of the buffering flags is what upstream checks.
    if parsed.changed("max-request-body") && !parsed.changed("buffer-requests") {
        return Err(CliError::MaxRequestBodyWithoutBuffering);
    }
    if parsed.changed("max-response-body") && !parsed.changed("buffer-responses") {
        return Err(CliError::MaxResponseBodyWithoutBuffering);
    }
    let tls = parsed.bool("tls");
    // The default is computed here, in the client; the server takes the boolean as sent.
    let forward_headers = if parsed.changed("forward-headers") {
        parsed.bool("forward-headers")
    } else {
        !tls
    };

    let mut service_options = ServiceOptions {
        hosts: parsed.strings("host"),
        path_prefixes: parsed.strings("path-prefix"),
        tls_enabled: tls,
        tls_certificate_path: parsed.string("tls-certificate-path"),
        tls_private_key_path: parsed.string("tls-private-key-path"),
        tls_on_demand_url: parsed.string("tls-on-demand-url"),
        tls_redirect: parsed.bool("tls-redirect"),
        canonical_host: parsed.string("canonical-host"),
        acme_directory: String::new(),
        acme_cache_path: parsed.string("tls-acme-cache-path"),
        error_page_path: parsed.string("error-pages"),
        strip_prefix: parsed.bool("strip-path-prefix"),
        writer_affinity_timeout: parsed.duration("writer-affinity-timeout"),
        read_targets_accept_websockets: parsed.bool("read-target-websockets"),
        exclude_metrics_paths: parsed.strings("exclude-metrics-path"),
        client_ip_header: parsed.string("client-ip-header"),
    };
    service_options.validate()?;
    check_required(command, parsed)?;
    if parsed.bool("tls-staging") {
        service_options.acme_directory = ACME_STAGING_DIRECTORY.to_string();
    }
    let acme_directory = parsed.string("tls-acme-directory");
    if !acme_directory.is_empty() {
        service_options.acme_directory = acme_directory;
    }

    let health_check_port = port_flag(parsed, "health-check-port")?;
    let target_options = TargetOptions {
        health_check_config: HealthCheckConfig {
            path: parsed.string("health-check-path"),
            port: health_check_port,
            interval: parsed.duration("health-check-interval"),
            timeout: parsed.duration("health-check-timeout"),
            host: parsed.string("health-check-host"),
        },
        response_timeout: parsed.duration("target-timeout"),
        buffer_requests: parsed.bool("buffer-requests"),
        buffer_responses: parsed.bool("buffer-responses"),
        max_memory_buffer_size: parsed.int("buffer-memory"),
        max_request_body_size: parsed.int("max-request-body"),
        max_response_body_size: parsed.int("max-response-body"),
        log_request_headers: parsed.strings("log-request-header"),
        log_response_headers: parsed.strings("log-response-header"),
        forward_headers,
        scope_cookie_paths: parsed.bool("scope-cookie-paths"),
    };

    Ok(Request::Deploy(DeployRequest {
        service: service.to_string(),
        target_urls: parsed.strings("target"),
        reader_urls: parsed.strings("read-target"),
        deploy_timeout: parsed.duration("deploy-timeout"),
        drain_timeout: parsed.duration("drain-timeout"),
        force: parsed.bool("force"),
        service_options,
        target_options,
    }))
}

/// A port-valued int flag. Upstream keeps any int (and fails later, at connect time); our
/// protocol carries a `u16`, so an out-of-range value is rejected here as a range error.
fn port_flag(parsed: &Parsed, name: &str) -> Result<u16, CliError> {
    let value = parsed.int(name);
    u16::try_from(value).map_err(|_| {
        let text = value.to_string();
        CliError::InvalidFlagValue {
            flag: format!("--{name}"),
            cause: format!(
                "strconv.ParseInt: parsing {}: value out of range",
                quote(&text)
            ),
            value: text,
        }
    })
}

/// `rollout deploy`.
pub(crate) fn rollout_deploy(
    command: &Command,
    parsed: &Parsed,
    service: &str,
) -> Result<Request, CliError> {
    check_required(command, parsed)?;
    Ok(Request::RolloutDeploy(RolloutDeployRequest {
        service: service.to_string(),
        target_urls: parsed.strings("target"),
        reader_urls: parsed.strings("read-target"),
        deploy_timeout: parsed.duration("deploy-timeout"),
        drain_timeout: parsed.duration("drain-timeout"),
    }))
}

/// `rollout set`.
pub(crate) fn rollout_set(
    command: &Command,
    parsed: &Parsed,
    service: &str,
) -> Result<Request, CliError> {
    check_required(command, parsed)?;
    Ok(Request::RolloutSet {
        service: service.to_string(),
        percentage: parsed.int("percent"),
        allowlist: parsed.strings("list"),
    })
}

/// `pause`.
pub(crate) fn pause(parsed: &Parsed, service: &str) -> Request {
    Request::Pause {
        service: service.to_string(),
        drain_timeout: parsed.duration("drain-timeout"),
        pause_timeout: parsed.duration("max-pause"),
    }
}

/// `stop`.
pub(crate) fn stop(parsed: &Parsed, service: &str) -> Request {
    Request::Stop {
        service: service.to_string(),
        drain_timeout: parsed.duration("drain-timeout"),
        message: parsed.string("message"),
    }
}

/// `run`: ports are checked in the order upstream opens them (metrics when enabled, HTTP,
/// HTTPS); a port outside 0..=65535 fails as Go's listen does.
pub(crate) fn run_config(parsed: &Parsed) -> Result<RunConfig, CliError> {
    let port = |value: i64| u16::try_from(value).map_err(|_| CliError::InvalidPort(value));
    let metrics_port = port(parsed.int("metrics-port"))?;
    Ok(RunConfig {
        debug: parsed.bool("debug"),
        http_port: port(parsed.int("http-port"))?,
        https_port: port(parsed.int("https-port"))?,
        metrics_port,
        http3: parsed.bool("http3"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tree;
    use kamal_control::GoDuration;

    fn parse(path: &[&str], args: &[&str]) -> (Command, Parsed) {
        let env = |_: &str| None;
        let root = tree::build(&env, "/data/certs");
        let mut command = &root;
        for name in path {
            command = command.children.iter().find(|c| c.name == *name).unwrap();
        }
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let parsed = command.effective_flags().parse(&args).unwrap();
        (command.clone(), parsed)
    }

    fn deploy_err(args: &[&str]) -> String {
        let (command, parsed) = parse(&["deploy"], args);
        deploy(&command, &parsed, "svc").unwrap_err().to_string()
    }

    fn deploy_ok(args: &[&str]) -> DeployRequest {
        let (command, parsed) = parse(&["deploy"], args);
        match deploy(&command, &parsed, "svc").unwrap() {
            Request::Deploy(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deploy_defaults() {
        let d = deploy_ok(&["--target", "t:80"]);
        assert_eq!(d.service, "svc");
        assert_eq!(d.target_urls, ["t:80"]);
        assert_eq!(d.deploy_timeout, GoDuration::from_secs(30));
        assert_eq!(d.drain_timeout, GoDuration::from_secs(30));
        assert!(!d.force);
        assert_eq!(d.service_options.acme_cache_path, "/data/certs");
        assert_eq!(d.service_options.acme_directory, "");
        assert!(d.service_options.strip_prefix && d.service_options.tls_redirect);
        assert_eq!(d.target_options.health_check_config.path, "/up");
        assert_eq!(
            d.target_options.health_check_config.interval,
            GoDuration::from_secs(1)
        );
        assert_eq!(
            d.target_options.health_check_config.timeout,
            GoDuration::from_secs(5)
        );
        assert_eq!(d.target_options.response_timeout, GoDuration::from_secs(30));
        assert_eq!(d.target_options.max_memory_buffer_size, 1_048_576);
        assert!(d.target_options.forward_headers, "no TLS: forward headers");
    }

    #[test]
    fn forward_headers_default_follows_tls() {
        let d = deploy_ok(&["--target", "t", "--host", "a.test", "--tls"]);
        assert!(!d.target_options.forward_headers);
        let d = deploy_ok(&[
            "--target",
            "t",
            "--host",
            "a.test",
            "--tls",
            "--forward-headers",
        ]);
        assert!(d.target_options.forward_headers);
        let d = deploy_ok(&["--target", "t", "--forward-headers=false"]);
        assert!(!d.target_options.forward_headers);
    }

    #[test]
    fn deploy_validation_order() {
        assert_eq!(
            deploy_err(&["--max-request-body=10", "--max-response-body=10"]),
            "max-request-body can only be set when request buffering is enabled"
        );
        assert_eq!(
            deploy_err(&[
                "--buffer-requests=false",
                "--max-request-body=10",
                "--max-response-body=1"
            ]),
            "max-response-body can only be set when response buffering is enabled"
        );
        assert_eq!(
            deploy_err(&["--tls"]),
            "service options invalid: host must be set when using TLS"
        );
        assert_eq!(deploy_err(&[]), r#"required flag(s) "target" not set"#);
        assert_eq!(
            deploy_err(&["--target=t", "--tls-certificate-path=c"]),
            "if any flags in the group [tls-certificate-path tls-private-key-path] are set they must all be set; missing [tls-private-key-path]"
        );
        assert_eq!(
            deploy_err(&["--target=t", "--tls-private-key-path=k"]),
            "if any flags in the group [tls-certificate-path tls-private-key-path] are set they must all be set; missing [tls-certificate-path]"
        );
        assert_eq!(
            deploy_err(&["--target=t", "--health-check-port=70000"]),
            r#"invalid argument "70000" for "--health-check-port" flag: strconv.ParseInt: parsing "70000": value out of range"#
        );
    }

    #[test]
    fn acme_directory_flag_sets_the_directory() {
        let d = deploy_ok(&[
            "--target",
            "t",
            "--tls-staging",
            "--tls-acme-directory",
            "https://ca.test/dir",
        ]);
        assert_eq!(d.service_options.acme_directory, "https://ca.test/dir");
    }

    #[test]
    fn staging_sets_the_acme_directory() {
        let d = deploy_ok(&["--target", "t", "--tls-staging"]);
        assert_eq!(
            d.service_options.acme_directory,
            "https://acme-staging-v02.api.letsencrypt.org/directory"
        );
    }

    #[test]
    fn rollout_set_needs_percent_or_list() {
        let (command, parsed) = parse(&["rollout", "set"], &[]);
        assert_eq!(
            rollout_set(&command, &parsed, "s").unwrap_err().to_string(),
            "at least one of the flags in the group [percent list] is required"
        );
        let (command, parsed) = parse(&["rollout", "set"], &["--list=a,b"]);
        assert_eq!(
            rollout_set(&command, &parsed, "s").unwrap(),
            Request::RolloutSet {
                service: "s".into(),
                percentage: 0,
                allowlist: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn run_ports_are_checked() {
        let (_, parsed) = parse(&["run"], &["--metrics-port", "9090", "--debug"]);
        let config = run_config(&parsed).unwrap();
        assert_eq!(
            config,
            RunConfig {
                debug: true,
                http_port: 80,
                https_port: 443,
                metrics_port: 9090,
                http3: false
            }
        );
        let (_, parsed) = parse(&["run"], &["--http-port=70000"]);
        assert_eq!(
            run_config(&parsed).unwrap_err().to_string(),
            "listen tcp: address 70000: invalid port"
        );
    }
}
