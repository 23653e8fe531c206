//! The command line, compatible with upstream's cobra/pflag CLI: same commands, flags, defaults,
//! help texts, error messages and exit codes.
//!
//! Parsing is a small pflag-style parser over a declarative flag table (`flags`) and a cobra-
//! style command tree (`command`) rather than clap: clap's model differs in the places that are
//! observable here (a bare boolean never takes the next word, CSV slices, presence-based checks,
//! cobra's subcommand search, Go literal syntax, exact error texts and help layout), and mapping
//! each of those onto clap would have been more code than the parser itself.

mod command;
mod csv;
mod error;
mod flags;
mod goparse;
mod list;
mod requests;
mod tree;

use std::io::Write;
use std::process::ExitCode;

use kamal_control::{Request, Response};

pub use error::CliError;

use command::{Action, Command};
use flags::Parsed;
use tree::EnvLookup;

/// Entry point of the binary: parses `std::env::args`, runs the command, returns the exit code.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    // Unlocked handles: `run` logs to stdout from other threads, so no lock may be held here.
    let code = execute(&args, &env, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

/// Runs one invocation; returns the exit status (0 or 1).
fn execute(args: &[String], env: EnvLookup<'_>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    // Upstream computes (and so creates) the data dir on every invocation, for the default of
    // `deploy --tls-acme-cache-path`.
    let acme_cache = kamal_control::paths::default_acme_cache_path(&env);
    let root = tree::build(env, &acme_cache.to_string_lossy());

    let (chain, rest) = match command::find(&root, args) {
        Ok(found) => found,
        Err(e) => {
            let _ = writeln!(err, "Error: {e}");
            let _ = writeln!(err, "Run '{} --help' for usage.", root.name);
            return 1;
        }
    };
    let command = chain[chain.len() - 1];
    let parsed = match command.effective_flags().parse(&rest) {
        Ok(parsed) => parsed,
        Err(e) => return fail(err, &e),
    };
    if parsed.bool("help") {
        let _ = out.write_all(command::help(&chain).as_bytes());
        return 0;
    }
    if let Some(version) = command.version {
        if parsed.bool("version") {
            let _ = writeln!(out, "{} version {version}", command.name);
            return 0;
        }
    }
    let Some(action) = command.action else {
        // A command that only groups others (the root, `rollout`) shows its help, exit 0.
        let _ = out.write_all(command::help(&chain).as_bytes());
        return 0;
    };
    if let Err(e) = command::check_positionals(&chain, &parsed.args) {
        return fail(err, &e);
    }
    match run_action(action, &root, command, &parsed, env, out, err) {
        Ok(()) => 0,
        Err(e) => fail(err, &e),
    }
}

fn fail(err: &mut dyn Write, error: &CliError) -> u8 {
    let _ = writeln!(err, "Error: {error}");
    1
}

fn run_action(
    action: Action,
    root: &Command,
    command: &Command,
    parsed: &Parsed,
    env: EnvLookup<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    // Commands with a `<service>` positional have exactly one by now.
    let service = parsed.args.first().map(String::as_str).unwrap_or_default();
    let request = match action {
        Action::Help => {
            help_topic(root, &parsed.args, out, err);
            return Ok(());
        }
        Action::Run => {
            let config = requests::run_config(parsed)?;
            return crate::run::run(config).map_err(CliError::Run);
        }
        Action::List => {
            let services = match call(env, &Request::List)? {
                Response::List { services } => services,
                _ => return Err(CliError::UnexpectedReply),
            };
            let text = if parsed.bool("json") {
                list::render_json(&services)?
            } else {
                list::render_table(&services)
            };
            let _ = out.write_all(text.as_bytes());
            return Ok(());
        }
        Action::Deploy => requests::deploy(command, parsed, service)?,
        Action::RolloutDeploy => requests::rollout_deploy(command, parsed, service)?,
        Action::RolloutSet => requests::rollout_set(command, parsed, service)?,
        Action::RolloutStop => Request::RolloutStop {
            service: service.to_string(),
        },
        Action::Remove => Request::Remove {
            service: service.to_string(),
        },
        Action::Resume => Request::Resume {
            service: service.to_string(),
        },
        Action::Pause => requests::pause(parsed, service),
        Action::Stop => requests::stop(parsed, service),
    };
    match call(env, &request)? {
        Response::Ok => Ok(()),
        _ => Err(CliError::UnexpectedReply),
    }
}

/// Sends one request over the control socket (no timeout: deploys wait for health checks).
fn call(env: EnvLookup<'_>, request: &Request) -> Result<Response, CliError> {
    let socket = kamal_control::paths::socket_path(&env);
    match kamal_control::client::call(&socket, request)? {
        Response::Error { message } => Err(CliError::Server(message)),
        response => Ok(response),
    }
}

/// `help <command…>`: that command's help, or cobra's "Unknown help topic" and the root usage
/// (on stderr, still exit 0).
fn help_topic(root: &Command, topic: &[String], out: &mut dyn Write, err: &mut dyn Write) {
    match command::find(root, topic) {
        Ok((chain, _)) => {
            let _ = out.write_all(command::help(&chain).as_bytes());
        }
        Err(_) => {
            let words: Vec<String> = topic
                .iter()
                .map(|w| kamal_control::quote::backquote(w))
                .collect();
            let _ = writeln!(err, "Unknown help topic [{}]", words.join(" "));
            let _ = err.write_all(command::usage_without_flags(&[root]).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Outcome {
        code: u8,
        stdout: String,
        stderr: String,
    }

    fn run(args: &[&str]) -> Outcome {
        let home = tempfile::tempdir().unwrap();
        let home_str = home.path().to_str().unwrap().to_string();
        let socket = home.path().join("none.sock").to_str().unwrap().to_string();
        let env = move |name: &str| match name {
            "HOME" => Some(home_str.clone()),
            "KAMAL_PROXY_SOCKET" => Some(socket.clone()),
            _ => None,
        };
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = execute(&args, &env, &mut out, &mut err);
        Outcome {
            code,
            stdout: String::from_utf8(out).unwrap(),
            stderr: String::from_utf8(err).unwrap(),
        }
    }

    const ROOT_HELP: &str = "HTTP proxy for zero downtime deployments

Usage:
  kamal-proxy [command]

Available Commands:
  deploy      Deploy a target host
  help        Help about any command
  list        List the services currently running
  pause       Pause a service
  remove      Remove the service
  resume      Resume a service
  rollout     Manage rollout settings
  run         Run the server
  stop        Stop a service

Flags:
  -h, --help      help for kamal-proxy
  -v, --version   version for kamal-proxy

Use \"kamal-proxy [command] --help\" for more information about a command.
";

    #[test]
    fn no_arguments_prints_root_help() {
        let o = run(&[]);
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (0, ROOT_HELP, "")
        );
        assert_eq!(run(&["--help"]).stdout, ROOT_HELP);
        assert_eq!(run(&["-h"]).stdout, ROOT_HELP);
        assert_eq!(run(&["help"]).stdout, ROOT_HELP);
    }

    #[test]
    fn version_flag() {
        let o = run(&["--version"]);
        assert_eq!(o.code, 0);
        assert_eq!(
            o.stdout,
            format!("kamal-proxy version {}\n", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn rollout_alone_or_unknown_prints_rollout_help() {
        let want = "Manage rollout settings

Usage:
  kamal-proxy rollout [command]

Available Commands:
  deploy      Deploy the rollout target
  set         Set traffic split for rollout
  stop        Stops rollout of a service

Flags:
  -h, --help   help for rollout

Use \"kamal-proxy rollout [command] --help\" for more information about a command.
";
        for args in [
            &["rollout"][..],
            &["rollout", "bogus"],
            &["help", "rollout"],
            &["rollout", "--help"],
        ] {
            let o = run(args);
            assert_eq!(
                (o.code, o.stdout.as_str(), o.stderr.as_str()),
                (0, want, ""),
                "{args:?}"
            );
        }
    }

    #[test]
    fn deploy_help_is_byte_exact() {
        let o = run(&["deploy", "--help"]);
        assert_eq!(o.code, 0);
        let certs = o
            .stdout
            .lines()
            .find(|l| l.contains("--tls-acme-cache-path"))
            .unwrap()
            .to_string();
        assert!(certs.ends_with("/.config/kamal-proxy/certs\")"), "{certs}");
        let want_start = "Deploy a target host

Usage:
  kamal-proxy deploy <service> [flags]

Flags:
      --buffer-memory int                  Max size of memory buffer (default 1048576)
      --buffer-requests                    Buffer requests before forwarding to target
      --buffer-responses                   Buffer responses before forwarding to client
      --canonical-host string              Redirect all requests to this host (e.g., force root or www)
      --client-ip-header string            Request header containing the original client IP; used to populate X-Forwarded-For when present
      --deploy-timeout duration            Maximum time to wait for the new target to become healthy (default 30s)
";
        assert!(o.stdout.starts_with(want_start), "{}", o.stdout);
        assert!(o
            .stdout
            .contains("\n  -h, --help                               help for deploy\n"));
        assert!(o.stdout.contains(
            "\n      --strip-path-prefix                  With --path-prefix, strip prefix from request before forwarding (default true)\n"
        ));
        assert!(o.stdout.ends_with("      --writer-affinity-timeout duration   Time after a write before read requests will be routed to readers (default 1s)\n"));
    }

    #[test]
    fn list_help_shows_aliases() {
        let o = run(&["ls", "-h"]);
        assert_eq!(
            o.stdout,
            "List the services currently running\n\nUsage:\n  kamal-proxy list [flags]\n\nAliases:\n  list, ls\n\n\
             Flags:\n  -h, --help   help for list\n      --json   Print the services as JSON\n"
        );
    }

    #[test]
    fn unknown_command() {
        let o = run(&["foo"]);
        assert_eq!(o.code, 1);
        assert_eq!(o.stdout, "");
        assert_eq!(o.stderr, "Error: unknown command \"foo\" for \"kamal-proxy\"\nRun 'kamal-proxy --help' for usage.\n");
        let o = run(&["stpo"]);
        assert_eq!(
            o.stderr,
            "Error: unknown command \"stpo\" for \"kamal-proxy\"\n\nDid you mean this?\n\tstop\n\nRun 'kamal-proxy --help' for usage.\n"
        );
    }

    #[test]
    fn unknown_help_topic_goes_to_stderr_with_root_usage() {
        let o = run(&["help", "foo"]);
        assert_eq!(o.code, 0);
        // cobra never set up the root's help flag on this path, so there is no Flags section.
        let usage = ROOT_HELP
            .strip_prefix("HTTP proxy for zero downtime deployments\n\n")
            .unwrap()
            .replace(
                "\n\nFlags:\n  -h, --help      help for kamal-proxy\n  -v, --version   version for kamal-proxy",
                "",
            );
        assert_eq!(o.stderr, format!("Unknown help topic [`foo`]\n{usage}"));
        assert!(!o.stderr.contains("Flags:"));
        assert_eq!(o.stdout, "");
    }

    #[test]
    fn parse_errors_are_reported_without_usage() {
        let o = run(&["deploy", "svc", "--bogus"]);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "Error: unknown flag: --bogus\n")
        );
        let o = run(&["list", "extra"]);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (
                1,
                "Error: unknown command \"extra\" for \"kamal-proxy list\"\n"
            )
        );
        let o = run(&["remove"]);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "Error: accepts 1 arg(s), received 0\n")
        );
        let o = run(&["deploy", "svc", "--tls", "false"]);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "Error: accepts 1 arg(s), received 2\n")
        );
    }
}
