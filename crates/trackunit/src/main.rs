//! `trackunit`: the client and the one-machine runner.

mod analyze;
mod output;
mod sample;
mod session;
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
    /// Analyse photos: upload each straight to storage, wait for the recognition, print it.
    /// Exit code 1 when any analysis failed.
    Analyze(analyze::AnalyzeArgs),
    /// Stream your analysis events as they happen.
    Watch(analyze::WatchArgs),
    /// List your past analyses, newest first.
    Analyses(analyze::AnalysesArgs),
    /// Sign in (device-code flow, or the development issuer of `trackunit up`) and cache the token.
    Login(session::SessionArgs),
    /// Forget the cached token.
    Logout,
    /// Write a generated machine photo to try the platform with.
    Sample(sample::SampleArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Up(args) => up::run(args).await.map(|()| 0),
        Command::Analyze(args) => analyze::run(args).await,
        Command::Watch(args) => analyze::watch(args).await,
        Command::Analyses(args) => analyze::analyses(args).await,
        Command::Login(args) => session::login(&args).await.map(|()| 0),
        Command::Sample(args) => sample::run(args),
        Command::Logout => session::logout().map(|removed| {
            eprintln!(
                "{}",
                if removed {
                    "signed out"
                } else {
                    "no cached token"
                }
            );
            0
        }),
    }?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
