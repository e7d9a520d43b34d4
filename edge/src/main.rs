//! Runs an edge alone.

fn main() -> std::process::ExitCode {
    parley::telemetry::init();
    eprintln!("run an edge with `parley edge` (the all-in-one binary's subcommand)");
    std::process::ExitCode::FAILURE
}
