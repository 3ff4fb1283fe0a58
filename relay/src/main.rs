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
    /// Make a CA, the relay's certificate (for the uplink, and for HTTPS
    /// with `http.tls_cert`) and an agent token; or, with `--agent HOST`, a
    /// client certificate for that agent from the same CA.
    Certs {
        /// Directory for ca.crt, ca.key, relay.crt, relay.key (and agents/).
        #[arg(long, default_value = "/etc/o1/tls")]
        out: PathBuf,
        /// DNS names and IP addresses agents and browsers use to reach the
        /// relay.
        #[arg(long = "name", required_unless_present = "agent")]
        names: Vec<String>,
        /// Issue a client certificate for this agent host instead.
        #[arg(long, conflicts_with = "names")]
        agent: Option<String>,
    },
    /// Credentials: `o1-relay token create --role reader --hosts 'web-*' --name alice`.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the SHA-256 of a token you chose yourself.
    HashToken { token: String },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a fresh token: prints it once, and the `[[auth.token]]` lines
    /// to add to relay.toml (which keep only its hash).
    Create {
        /// agent, publisher, reader or admin.
        #[arg(long)]
        role: String,
        /// Host globs the token covers (repeat or separate with commas);
        /// default: every host.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        hosts: Vec<String>,
        /// Who holds it (shown in the relay's logs).
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    o1_runtime::init_tracing();
    match cli.command {
        Some(Command::Certs {
            out,
            agent: Some(host),
            ..
        }) => agent_certificate(&out, &host),
        Some(Command::Certs { out, names, .. }) => certs(&out, &names),
        Some(Command::Token {
            command: TokenCommand::Create { role, hosts, name },
        }) => token_create(&role, &hosts, &name),
        Some(Command::HashToken { token }) => {
            println!("{}", o1_relay::auth::hash_token(&token));
            ExitCode::SUCCESS
        }
        Some(Command::Serve { no_uplink }) => serve(&cli.config, &cli.overrides, !no_uplink),
        None => serve(&cli.config, &cli.overrides, true),
    }
}

fn token_create(role: &str, hosts: &[String], name: &str) -> ExitCode {
    let parsed: Result<o1_relay::auth::Role, _> =
        serde::de::Deserialize::deserialize(serde::de::value::StrDeserializer::<
            serde::de::value::Error,
        >::new(role));
    let Ok(role) = parsed else {
        eprintln!(
            "o1-relay token create: --role must be agent, publisher, reader or admin, not `{role}`"
        );
        return ExitCode::from(2);
    };
    if let Err(e) = o1_relay::auth::Scope::parse(hosts) {
        eprintln!("o1-relay token create: --hosts: {e}");
        return ExitCode::from(2);
    }
    let token = o1_relay::auth::generate_token();
    let quoted: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    println!("token: {token}");
    println!("(shown once: the relay keeps only its hash)\n");
    println!("# relay.toml");
    println!("[[auth.token]]");
    println!("name = {name:?}");
    println!("sha256 = \"{}\"", o1_relay::auth::hash_token(&token));
    println!("role = \"{role}\"");
    println!("hosts = [{}]", quoted.join(", "));
    ExitCode::SUCCESS
}

fn agent_certificate(out: &std::path::Path, host: &str) -> ExitCode {
    if !o1_relay::ingest::valid_name(host, o1_relay::ingest::MAX_HOST_BYTES)
        || rustls::pki_types::ServerName::try_from(host).is_err()
    {
        eprintln!(
            "o1-relay certs --agent: `{host}` is not a host name a certificate can carry (DNS name or IP address)"
        );
        return ExitCode::from(2);
    }
    match o1_relay::certs::issue_agent(out, host) {
        Ok(issued) => {
            println!(
                "agent certificate: {}\nagent key: {}\n",
                issued.cert.display(),
                issued.key.display()
            );
            println!(
                "# relay.toml\n[uplink]\nclient_ca = \"{}\"\n",
                issued.ca_cert.display()
            );
            println!(
                "# agent.toml of {host} (copy the three files to it)\nhost = \"{host}\"\n[relay]\nca = \"/etc/o1/ca.crt\"\nclient_cert = \"/etc/o1/{host}.crt\"\nclient_key = \"/etc/o1/{host}.key\""
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("o1-relay certs --agent: {e}");
            ExitCode::FAILURE
        }
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
            println!(
                "[[auth.token]]\nname = \"agents\"\nsha256 = \"{}\"\nrole = \"agent\"\nhosts = [\"*\"]\n",
                generated.token_sha256
            );
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
        // The history log first: the relay listens once its state is back.
        let state = match AppState::new(config.clone(), o1_runtime::stop_on_signals()) {
            Ok(state) => state,
            Err(e) => {
                eprintln!("o1-relay: history log (history.dir): {e}");
                return ExitCode::from(3);
            }
        };
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
        let scheme = if listeners.http_tls.is_some() {
            "https"
        } else {
            "http"
        };
        println!("o1-relay listening http={http} uplink={uplink} scheme={scheme}");
        tracing::info!(%http, %uplink, "o1-relay listening");
        run(state, listeners).await;
        ExitCode::SUCCESS
    })
}
