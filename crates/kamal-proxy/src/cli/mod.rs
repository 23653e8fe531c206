//! The command line: argument parsing compatible with upstream's cobra/pflag CLI.

/// Entry point of the binary.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
