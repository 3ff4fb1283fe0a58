//! `o1-relay`: parse the command line, load the config, bind, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use o1_relay::config::RelayConfig;
use o1_relay::{AppState, bind, run};

#[derive(Debug, Parser)]
#[command(
    name = "o1-relay",
    version,
    about = "o1 relay: agents push over QUIC, browsers subscribe over WebSocket"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "O1_RELAY_CONFIG",
        default_value = "/etc/o1/relay.toml",
        global = true
    )]
    config: PathBuf,
    /// Override a config key: `--set websocket.max_connections=5000`.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve {
        /// Serve WebSocket and REST only, without the QUIC uplink.
        #[arg(long)]
        no_uplink: bool,
    },
    /// Make a CA, the relay's certificate and an agent token.
    Certs {
        /// Directory for ca.crt, ca.key, relay.crt, relay.key.
        #[arg(long, default_value = "/etc/o1/tls")]
        out: PathBuf,
        /// DNS names and IP addresses agents use to reach the relay.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// Print the SHA-256 of a token, for `auth.token_sha256`.
    HashToken { token: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    o1_runtime::init_tracing();
    match cli.command {
        Some(Command::Certs { out, names }) => certs(&out, &names),
        Some(Command::HashToken { token }) => {
            println!("{}", o1_relay::auth::hash_token(&token));
            ExitCode::SUCCESS
        }
        Some(Command::Serve { no_uplink }) => serve(&cli.config, &cli.overrides, !no_uplink),
        None => serve(&cli.config, &cli.overrides, true),
    }
}

fn certs(out: &std::path::Path, names: &[String]) -> ExitCode {
    match o1_relay::certs::generate(out, names) {
        Ok(generated) => {
            println!(
                "{} CA: {}\nrelay certificate: {}\nrelay key: {}\n",
                if generated.reused_ca { "reused" } else { "new" },
                generated.ca_cert.display(),
                generated.relay_cert.display(),
                generated.relay_key.display()
            );
            println!(
                "# relay.toml\n[uplink]\ncert = \"{}\"\nkey = \"{}\"\n",
                generated.relay_cert.display(),
                generated.relay_key.display()
            );
            println!("[auth]\ntoken_sha256 = [\"{}\"]\n", generated.token_sha256);
            println!(
                "# agent.toml (copy ca.crt to the agent host)\n[relay]\naddress = \"{}:4433\"\nserver_name = \"{}\"\nca = \"/etc/o1/ca.crt\"\ntoken = \"{}\"",
                names.first().map_or("relay", String::as_str),
                names.first().map_or("relay", String::as_str),
                generated.token
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("o1-relay certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: &std::path::Path, overrides: &[String], with_uplink: bool) -> ExitCode {
    let explicit = std::env::var_os("O1_RELAY_CONFIG").is_some()
        || config_path != std::path::Path::new("/etc/o1/relay.toml");
    let config = match RelayConfig::load(Some(config_path), explicit, overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("o1-relay: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match o1_runtime::runtime(true) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("o1-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listeners = match bind(&config, with_uplink).await {
            Ok(listeners) => listeners,
            Err(e) => {
                eprintln!("o1-relay: {e:#}");
                return ExitCode::from(3);
            }
        };
        let http = listeners
            .http_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let uplink = listeners
            .uplink_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into());
        // One line on stdout for scripts and tests; logs go to stderr.
        println!("o1-relay listening http={http} uplink={uplink}");
        tracing::info!(%http, %uplink, "o1-relay listening");
        let state = AppState::new(config, o1_runtime::stop_on_signals());
        run(state, listeners).await;
        ExitCode::SUCCESS
    })
}
