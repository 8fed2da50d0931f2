//! `portcullis`: dispatches subcommands; the work lives in the crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// pingora allocates per request (headers, buffers, tasks); glibc malloc was
// ~10% of the gateway's CPU under load (perf, benches/load.sh), mimalloc
// about a third of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Edge API gateway and single sign-on service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge proxy.
    Gateway {
        /// Config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 valid, 2 invalid.
    Check {
        /// Config file (YAML).
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
}

/// Exit codes: 0 ok, 1 runtime failure, 2 invalid config or arguments.
const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    match cli.command {
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&portcullis_config::json_schema()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Check { config } => match portcullis_config::load(&config) {
            Ok(valid) => {
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    config.display(),
                    valid.config.listeners.len(),
                    valid.config.upstreams.len(),
                    valid.config.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Gateway { config } => {
            let valid = match portcullis_config::load(&config) {
                Ok(valid) => valid,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match portcullis_gateway::run(valid) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {:#}", anyhow::Error::from(e));
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}
