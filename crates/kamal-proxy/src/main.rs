fn main() -> std::process::ExitCode {
    kamal_proxy::cli::main()
}
