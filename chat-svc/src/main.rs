//! Runs chat-svc alone.

fn main() -> std::process::ExitCode {
    parley::telemetry::init();
    eprintln!("run chat-svc with `parley chat` (the all-in-one binary's subcommand)");
    std::process::ExitCode::FAILURE
}
