//! `o1`: the whole system on one machine, for a first look. Runs the relay
//! and an in-process agent for this host (see [`demo`]). It lives in its own
//! package so that neither `o1-relay` nor `o1-agent` links the other.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Run a relay and an agent for this machine, with no config and no
/// external service.
#[derive(Debug, Parser)]
#[command(name = "o1", version)]
struct Cli {
    /// Where TLS material, the token, the agent's state and demo.log go.
    #[arg(long, default_value = "o1-data")]
    dir: PathBuf,
    /// HTTP listener (WebSocket API and REST).
    #[arg(long, default_value = "127.0.0.1:3000")]
    http: SocketAddr,
    /// QUIC uplink listener.
    #[arg(long, default_value = "127.0.0.1:4433")]
    uplink: SocketAddr,
    /// Seconds between heartbeat lines written to demo.log (0: none).
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("o1: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = demo::DemoOptions {
        data_dir: cli.dir,
        http: cli.http,
        uplink: cli.uplink,
        heartbeat_secs: cli.heartbeat_secs,
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            on_signal.cancel();
        });
        match demo::demo(options, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("o1: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
