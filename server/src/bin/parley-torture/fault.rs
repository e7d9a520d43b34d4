//! The fault injector: runs the real `parley` binary on a data directory
//! (port 0, its "Parley listening on http://ADDR" line read from stdout),
//! kills it with SIGKILL or stops it with SIGTERM at random moments and
//! starts it again on the same directory; on the real engines it also stops
//! and restarts the broker, Redis and the Mongo-wire server one at a time
//! (`scripts/infra down|up NAME`); against a cluster it kills, stops and
//! starts single processes (`scripts/cluster kill|stop|start ID`).

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// Variables set for the server (others are inherited).
    pub env: Vec<(String, String)>,
    /// Variables removed from its environment.
    pub unset: Vec<String>,
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub pid: u32,
    pub url: String,
}

/// How a server life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Kill,
    Term,
}

/// Starts the server and waits for its listening line (at most 120 s).
pub async fn start(spec: &ServerSpec) -> anyhow::Result<Server> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.data_dir.join("parley.stderr"))
        .context("parley.stderr")?;
    let mut command = Command::new(&spec.bin);
    command
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("PARLEY_DATA_DIR", &spec.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    for (k, v) in &spec.env {
        command.env(k, v);
    }
    for k in &spec.unset {
        command.env_remove(k);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", spec.bin.display()))?;
    let pid = child.id().context("no pid")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("Parley listening on http://") {
                return Ok(addr.trim().to_owned());
            }
        }
        bail!(
            "parley exited before listening (see {})",
            spec.data_dir.join("parley.stderr").display()
        )
    };
    let addr = tokio::time::timeout(Duration::from_secs(120), listening)
        .await
        .context("parley did not listen within 120 s")??;
    // Nothing else is printed on stdout, but keep the pipe drained.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        pid,
        url: format!("http://{addr}"),
    })
}

impl Server {
    /// Stops it; a SIGTERM'd server that does not exit within 30 s, or
    /// exits unsuccessfully, is an error.
    pub async fn stop(mut self, how: Stop) -> anyhow::Result<()> {
        match how {
            Stop::Kill => {
                self.child.start_kill()?;
                self.child.wait().await?;
                Ok(())
            }
            Stop::Term => {
                let status = Command::new("kill")
                    .args(["-TERM", &self.pid.to_string()])
                    .status()
                    .await?;
                if !status.success() {
                    bail!("kill -TERM {} failed", self.pid);
                }
                match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
                    Ok(exit) => {
                        let exit = exit?;
                        if !exit.success() {
                            bail!("parley exited with {exit} on SIGTERM");
                        }
                        Ok(())
                    }
                    Err(_) => {
                        self.child.start_kill()?;
                        self.child.wait().await?;
                        bail!("parley did not exit within 30 s of SIGTERM (killed)")
                    }
                }
            }
        }
    }
}

/// Runs a script of the repository (`scripts/infra`, `scripts/cluster`),
/// failing when it does.
pub async fn script(path: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(path)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run {}", path.display()))?;
    if !status.success() {
        bail!("{} {args:?} failed: {status}", path.display());
    }
    Ok(())
}

/// `scripts/infra down ENGINE`, checking that it really stopped: `down`
/// stops only what that checkout's `scripts/infra up` started.
pub async fn engine_down(infra: &std::path::Path, engine: &str) -> anyhow::Result<()> {
    script(infra, &["down", engine]).await?;
    let status = Command::new(infra).arg("status").output().await?;
    let listing = String::from_utf8_lossy(&status.stdout);
    if listing
        .lines()
        .any(|l| l.starts_with(engine) && l.contains(" up "))
    {
        bail!(
            "{engine} still runs after `{} down {engine}`: it was not started by that scripts/infra (set PARLEY_INFRA to the one that started it)",
            infra.display()
        );
    }
    Ok(())
}

/// The engines stopped in turn on the real-engine run.
pub const ENGINES: [&str; 3] = ["kafka", "redis", "ferretdb"];

/// The cluster faults in turn: (action, process).
pub const CLUSTER_FAULTS: [(&str, &str); 4] = [
    ("kill", "edge-1"),
    ("stop", "chat-1"),
    ("kill", "chat-2"),
    ("stop", "edge-2"),
];
