//! `parley-chat`: chat-svc as its own process.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "parley-chat", version, about = "Parley chat-svc")]
struct Args {
    #[command(flatten)]
    node: parley::node::NodeArgs,
    #[command(flatten)]
    chat: parley_chat::ChatArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    let args = Args::parse();
    parley_chat::run_standalone(&args.node, &args.chat).await?;
    Ok(())
}
