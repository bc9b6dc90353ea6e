//! The `gauntlet` binary: parse arguments, build the config, hand over to the library.

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Send rows (CSV) or logged requests to a gateway; exit 2 when an objective is missed.
    Loadtest(gauntlet::cli::loadtest::LoadtestArgs),
    #[command(flatten)]
    Admin(gauntlet::cli::admin::AdminCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args).map(|()| true),
        Command::Loadtest(args) => loadtest(&args),
        Command::Admin(command) => {
            runtime().map_err(Into::into).and_then(|rt| rt.block_on(command.run())).map(|()| true)
        }
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(error) => {
            eprintln!("gauntlet: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: &gauntlet::config::ServeArgs) -> anyhow::Result<()> {
    let config = gauntlet::config::Config::load(args)?;
    gauntlet::init_tracing(&config);
    runtime()?.block_on(gauntlet::run(config, gauntlet::shutdown_signal()))
}

fn loadtest(args: &gauntlet::cli::loadtest::LoadtestArgs) -> anyhow::Result<bool> {
    let runtime = match args.threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
        None => runtime()?,
    };
    runtime.block_on(gauntlet::cli::loadtest::run_and_report(args))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}
