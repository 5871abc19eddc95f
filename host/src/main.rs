//! The `wasmop` command line. See `wasmop --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
