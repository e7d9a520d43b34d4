//! Runs `parley-torture` against the `parley` binary of this build and
//! answers its `TORTURE ` summary line, failing the test unless the run
//! passed and every `clean` field (such as `" lost=0 "`) is in it. Shared
//! by the torture and overload test binaries.

use std::process::Command;

/// Runs the tool with `args` (the server binary is added) and `env` set
/// for it and the server it spawns.
pub fn passing_summary(args: &[&str], env: &[(&str, &str)], clean: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley-torture"));
    command
        .args(args)
        .args(["--server-bin", env!("CARGO_BIN_EXE_parley")])
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("TORTURE "))
        .unwrap_or_else(|| panic!("no summary line\n{stdout}\n{stderr}"))
        .to_owned();
    eprintln!("{summary}");
    assert!(
        out.status.success() && summary.contains(" result=PASS "),
        "torture failed ({})\n{stdout}\n{stderr}",
        out.status
    );
    for field in clean {
        assert!(summary.contains(field), "{field:?} not in {summary}");
    }
    summary
}
