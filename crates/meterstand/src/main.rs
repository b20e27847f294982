//! The `meterstand` executable; everything lives in the library (`cli::main`).

fn main() -> std::process::ExitCode {
    meterstand::cli::main()
}
