//! `parley-chat`: chat-svc as its own process.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "parley-chat", version, about = "Parley chat-svc")]
struct Args {
    #[command(flatten)]
    node: parley::node::NodeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    parley_chat::run_standalone(&Args::parse().node).await?;
    Ok(())
}
