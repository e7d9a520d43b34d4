//! Runs presence-svc alone.

fn main() -> std::process::ExitCode {
    parley::telemetry::init();
    eprintln!("run presence-svc with `parley presence` (the all-in-one binary's subcommand)");
    std::process::ExitCode::FAILURE
}
