//! `o1`: the whole system on one machine, for a first look. Runs the relay
//! and an in-process agent for this host (see [`demo`]). It lives in its own
//! package so that neither `o1-relay` nor `o1-agent` links the other.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

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
    o1_runtime::init_tracing();
    let runtime = match o1_runtime::runtime(true) {
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
        let shutdown = o1_runtime::stop_on_signals();
        match demo::demo(options, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("o1: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
