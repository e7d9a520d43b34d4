//! `parley`: the all-in-one chat server. `cargo run --release` starts it on
//! http://127.0.0.1:8080 with embedded backends under ./data.

use clap::Parser;
use parley_server::App;
use parley_server::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    let cli = Cli::parse();
    let config = cli.app_config()?;
    let listener = tokio::net::TcpListener::bind((cli.host.as_str(), cli.port)).await?;
    let app = App::start(config, listener).await?;
    // Scripts and tests read the bound address from this line.
    println!("Parley listening on http://{}", app.http_addr());
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    app.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
