//! The `gatewarden` command: serve gates, run the demo, import, query, and manage galleries.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
