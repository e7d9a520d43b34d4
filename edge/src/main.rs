//! `parley-edge`: one edge as its own process.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "parley-edge",
    version,
    about = "Parley edge (WebSocket + REST)"
)]
struct Args {
    #[command(flatten)]
    node: parley::node::NodeArgs,
    #[command(flatten)]
    http: parley_edge::HttpArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    let args = Args::parse();
    parley_edge::run_standalone(&args.node, &args.http).await?;
    Ok(())
}
