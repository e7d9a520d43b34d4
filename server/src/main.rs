//! `parley`: the chat server. `cargo run --release` starts every role in one
//! process on http://127.0.0.1:8080 with embedded backends under ./data;
//! `parley edge|auth|chat|presence` runs one role.

use clap::Parser;
use parley_server::App;
use parley_server::cli::{Cli, Role};

/// jemalloc instead of glibc's malloc. glibc keeps a heap arena per thread
/// that allocated (up to 8 per core) and seldom hands freed memory back, so
/// the server's RSS ratcheted up with every burst of load (0.4 → 1.6 GiB
/// over four 10 s overload runs in one process); jemalloc's dirty-page
/// decay returns it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    let cli = Cli::parse();
    match cli.role.clone().unwrap_or(Role::All) {
        Role::All => run_all(&cli).await,
        Role::Edge => Ok(parley_edge::run_standalone(&cli.node, &cli.http).await?),
        Role::Auth => Ok(parley_auth::run_standalone(&cli.node, &cli.auth).await?),
        Role::Chat => Ok(parley_chat::run_standalone(&cli.node, &cli.chat).await?),
        Role::Presence => Ok(parley_presence::run_standalone(&cli.node, &cli.presence).await?),
        Role::Probe { addr } => {
            if let Err(e) = probe(&addr).await {
                // One line for a healthcheck log, not a backtrace.
                eprintln!("{addr}: not serving: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// One gRPC health check with a short deadline; the exit code says SERVING.
async fn probe(addr: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2))
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        println!("SERVING");
        Ok(())
    } else {
        anyhow::bail!("{addr} is not serving (status {status})")
    }
}

async fn run_all(cli: &Cli) -> anyhow::Result<()> {
    let config = cli.app_config()?;
    let listener = tokio::net::TcpListener::bind((cli.http.host.as_str(), cli.http.port)).await?;
    let app = App::start(config, listener).await?;
    // Scripts and tests read the bound address from this line.
    println!("Parley listening on http://{}", app.http_addr());
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        parley::node::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    app.wait().await;
    Ok(())
}
