//! `trackunit`: the client and the one-machine runner.

mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trackunit",
    version,
    about = "Machine recognition platform: run it, use it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: all six services in one process on embedded defaults (in-process
    /// broker, data under one directory), or real brokers where env vars say so.
    Up(up::UpArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::run(args).await,
    }
}
