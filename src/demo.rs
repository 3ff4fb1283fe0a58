//! `o1` (`cargo run --release`): the whole system on one machine, no config, no external
//! service. Makes dev TLS material and a token in a data directory (reused
//! on later runs), starts the relay and an in-process agent for this host
//! that watches `<data>/demo.log`, appends a heartbeat line to it every few
//! seconds, and prints where to look. Ctrl-C stops everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use o1_relay::config::RelayConfig;
use o1_relay::{AppState, bind, run};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub uplink: SocketAddr,
    /// Seconds between heartbeat lines; 0 for none.
    pub heartbeat_secs: u64,
}

/// TLS files and the token, made once and kept in `data_dir`.
fn credentials(data_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let tls = data_dir.join("tls");
    let token_path = data_dir.join("token");
    if let (true, Ok(token)) = (
        tls.join("relay.crt").exists(),
        std::fs::read_to_string(&token_path),
    ) {
        return Ok((tls, token.trim().to_owned()));
    }
    let generated = o1_relay::certs::generate(&tls, &["localhost".into(), "127.0.0.1".into()])?;
    o1_agent::checkpoint::write_atomically(&token_path, generated.token.as_bytes())?;
    Ok((tls, generated.token))
}

pub async fn demo(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = &options.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(data_dir)?;
    let (tls, token) = credentials(&data_dir)?;
    let mut config = RelayConfig::default();
    config.http.listen = options.http;
    config.uplink.listen = options.uplink;
    config.uplink.cert = tls.join("relay.crt");
    config.uplink.key = tls.join("relay.key");
    // The demo runs on loopback for one person: browsers read without a
    // token (the seed page's examples run unchanged); the local agent has
    // an agent token for this host only.
    config.auth.browsers = o1_relay::config::BrowserAccess::Open;
    config.auth.token = vec![o1_relay::config::TokenConfig {
        name: "demo agent".into(),
        sha256: o1_relay::auth::hash_token(&token),
        role: o1_relay::auth::Role::Agent,
        hosts: vec!["*".into()],
    }];
    config.shutdown.grace_secs = 3;
    config.history.dir = data_dir.join("history");
    config.validate()?;
    let listeners = bind(&config, true).await?;
    let http = listeners.http_addr().context("http address")?;
    let uplink = listeners.uplink_addr().context("uplink address")?;

    let log = data_dir.join("demo.log");
    if !log.exists() {
        std::fs::write(&log, "")?;
    }
    let mut agent = o1_agent::config::AgentConfig {
        state_dir: data_dir.join("agent"),
        ..Default::default()
    };
    agent.relay.address = uplink.to_string();
    agent.relay.server_name = Some("localhost".into());
    agent.relay.ca = Some(tls.join("ca.crt"));
    agent.relay.token = token.clone();
    agent.logs.start_at = o1_agent::config::StartAt::End;
    agent
        .applications
        .push(o1_agent::config::ApplicationConfig {
            name: "demo".into(),
            process_name: None,
            cmdline: None,
            systemd_unit: None,
            data_dir: Some(data_dir.clone()),
            logs: vec![log.display().to_string()],
            multiline: o1_agent::config::Multiline::None,
            follow_symlinks: false,
            journal: None,
        });
    agent.validate()?;
    let host = agent.host_name();

    println!("o1-relay listening http={http} uplink={uplink}");
    println!();
    println!("o1 demo: relay and agent for host `{host}` are running.");
    println!("  dashboard       http://{http}/");
    println!("  WebSocket API   ws://{http}/api/websocket");
    println!("  statistics      http://{http}/api/websocket/stats");
    println!("  hosts           http://{http}/api/hosts");
    println!("  Prometheus      http://{http}/metrics");
    println!("  watched log     {}", log.display());
    println!("  agent token     {}", data_dir.join("token").display());
    println!();
    println!("Try:  echo 'ERROR something broke' >> {}", log.display());
    println!("and in a browser console:");
    println!(
        "  const ws = new WebSocket('ws://{http}/api/websocket');\n  ws.onopen = () => ws.send(JSON.stringify({{type: 'subscribe-logs', host: '{host}', tail: 10}}));\n  ws.onmessage = (e) => console.log(JSON.parse(e.data));"
    );
    println!("Ctrl-C stops everything.");

    let state = AppState::new(config, shutdown.clone())?;
    let relay = tokio::spawn(run(state, listeners));
    let agent_task = tokio::spawn(o1_agent::run(agent, shutdown.clone()));
    if options.heartbeat_secs > 0 {
        let (log, shutdown, every) = (
            log.clone(),
            shutdown.clone(),
            Duration::from_secs(options.heartbeat_secs),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                n += 1;
                let line = format!("{} INFO demo heartbeat {n}\n", o1_common::Timestamp::now());
                use std::io::Write;
                if let Ok(mut file) = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&log)
                {
                    let _ = file.write_all(line.as_bytes());
                }
            }
        });
    }
    shutdown.cancelled().await;
    let _ = agent_task.await;
    relay.await.context("relay task")?;
    Ok(())
}
