//! Runs auth-svc alone: `parley-auth --help`.

fn main() -> std::process::ExitCode {
    parley::telemetry::init();
    eprintln!("run auth-svc with `parley auth` (the all-in-one binary's subcommand)");
    std::process::ExitCode::FAILURE
}
