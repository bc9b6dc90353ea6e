//! The `gauntlet` binary: parse arguments, build the config, hand over to the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gauntlet", version, about = "Champion-challenger model-serving gateway for ONNX models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of a repository over the Open Inference Protocol (KServe V2).
    Serve(gauntlet::config::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gauntlet: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: &gauntlet::config::ServeArgs) -> anyhow::Result<()> {
    let config = gauntlet::config::Config::load(args)?;
    gauntlet::init_tracing(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(gauntlet::run(config, gauntlet::shutdown_signal()))
}
