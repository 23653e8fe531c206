//! Project automation. `cargo xtask ci` runs every check CI runs; `cargo xtask bench` compares
//! kamal-proxy with nginx and with no proxy at all; `cargo xtask bench --micro` runs the
//! criterion micro-benchmarks.

mod bench;

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask ci
       cargo xtask bench [--duration SECS] [--rounds N] [--deploys N] [--no-build] [--log-pipe] [SCENARIO…]
       cargo xtask bench --micro [criterion args…]

scenarios: keep-alive keep-alive-metrics conn-per-request tls-conn-per-request h2-tls
           1mib-response 1mib-upload deploy-under-load idle-connections (default: all)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("--micro") => micro(&args[2..]),
            Some("-h" | "--help") => {
                println!("{USAGE}");
                Ok(())
            }
            _ => match bench::Options::parse(&args[1..]) {
                Ok(options) => bench::run(&options),
                Err(e) => {
                    eprintln!("xtask: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(step) => {
            eprintln!("xtask: {step}");
            ExitCode::FAILURE
        }
    }
}

/// Formatting, lints, tests and (when cargo-deny is installed) the dependency policy.
fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    if Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        // Advisories need the advisory database from the network; CI machines have none.
        cargo(&["deny", "check", "bans", "licenses", "sources"])?;
    } else {
        eprintln!("xtask: cargo-deny not installed; skipping `cargo deny check`");
    }
    Ok(())
}

/// The criterion micro-benchmarks of every crate. Extra arguments go to criterion.
fn micro(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "--workspace", "--"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

/// Runs `cargo <args>` (the cargo that runs xtask), inheriting the terminal.
fn cargo(args: &[&str]) -> Result<(), String> {
    let line = format!("cargo {}", args.join(" "));
    eprintln!("xtask: {line}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .map_err(|e| format!("`{line}` could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed"))
    }
}
