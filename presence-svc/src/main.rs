//! `parley-presence`: presence-svc as its own process.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "parley-presence", version, about = "Parley presence-svc")]
struct Args {
    #[command(flatten)]
    node: parley::node::NodeArgs,
    #[command(flatten)]
    presence: parley_presence::PresenceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    let args = Args::parse();
    parley_presence::run_standalone(&args.node, &args.presence).await?;
    Ok(())
}
