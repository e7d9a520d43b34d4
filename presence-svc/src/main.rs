//! `parley-presence`: presence-svc as its own process.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "parley-presence", version, about = "Parley presence-svc")]
struct Args {
    #[command(flatten)]
    node: parley::node::NodeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    parley_presence::run_standalone(&Args::parse().node).await?;
    Ok(())
}
