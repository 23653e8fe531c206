//! The `kamal-proxy` binary: everything lives in the library so tests can run it in-process.

/// mimalloc instead of glibc's allocator: a request makes many small, short-lived allocations
/// (headers, log lines), which glibc's malloc showed up for in profiles. Only the binary picks
/// the allocator, so embedding the library crates keeps the host's choice.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kamal_proxy::cli::main()
}
