//! `o1-agent`: run the agent (default), or run one deployment step.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use o1_agent::config::AgentConfig;

#[derive(Debug, Parser)]
#[command(
    name = "o1-agent",
    version,
    about = "o1 agent: metrics, logs and deployments, pushed to an o1 relay over QUIC"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "O1_AGENT_CONFIG",
        default_value = "/etc/o1/agent.toml",
        global = true
    )]
    config: PathBuf,
    /// Override a config key: `--set metrics.interval_ms=500`.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Run a deployment step and stream it to the relay:
    /// `o1-agent deploy --id ID --app NAME -- COMMAND ARGS...`
    Deploy {
        /// Deployment id; default: `deploy-YYYYMMDD-HHMMSS`.
        #[arg(long)]
        id: Option<String>,
        /// Application being deployed.
        #[arg(long)]
        app: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Check the configuration and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    o1_runtime::init_tracing();
    let explicit = std::env::var_os("O1_AGENT_CONFIG").is_some()
        || cli.config != std::path::Path::new("/etc/o1/agent.toml");
    let config = match AgentConfig::load(Some(&cli.config), explicit, &cli.overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("o1-agent: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match o1_runtime::runtime(false) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("o1-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            println!(
                "configuration ok: host {}, {} application(s)",
                config.host_name(),
                config.applications.len()
            );
            ExitCode::SUCCESS
        }
        Some(Command::Deploy { id, app, command }) => {
            runtime.block_on(o1_agent::deploy::run(config, id, app, command))
        }
        Some(Command::Run) | None => runtime.block_on(async move {
            match o1_agent::run(config, o1_runtime::stop_on_signals()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("o1-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}
