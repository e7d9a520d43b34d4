//! `parley-auth`: auth-svc as its own process.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "parley-auth", version, about = "Parley auth-svc")]
struct Args {
    #[command(flatten)]
    node: parley::node::NodeArgs,
    #[command(flatten)]
    auth: parley_auth::config::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley::telemetry::init();
    let args = Args::parse();
    parley_auth::run_standalone(&args.node, &args.auth).await?;
    Ok(())
}
