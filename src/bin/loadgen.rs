//! `o1-loadgen`: load generator for the relay (and the nchan baseline).
//! Every figure in BENCHMARKS.md names the command that produced it.
//!
//! - `idle`: opens N idle WebSocket connections and reports the server's
//!   resident memory per connection.
//! - `fanout`: N WebSocket subscribers, one publisher; delivered messages
//!   per second, latency p50/p99, server CPU per delivered message.
//!   `--nchan` publishes by HTTP POST to an nginx+nchan channel instead.
//! - `ingest`: K simulated agents push log lines over QUIC; lines per
//!   second and server CPU per million lines.
//! - `replay-stall`: fills history (sources × lines), then measures an
//!   agent's publish → ack time for one-line batches while WebSocket
//!   clients ask for `tail` replays of all of it.
//! - `half-open`: N QUIC connections that finish TLS, open streams and
//!   send the start of a hello that never ends; the server's memory
//!   growth while they are held.
//! - `file-latency`: appends realistic log lines (timestamp, level,
//!   request, JSON tail) to a file an agent tails, at a fixed rate, while
//!   subscribed to them over WebSocket; latency from the write to the
//!   message received, p50/p99/max.
//! - `floor-server`: the least a WebSocket server can do for a paced
//!   fan-out (accept the upgrades, then `send` each message's frame to
//!   every socket, split across one thread per core): the machine's floor
//!   for `fanout --server-publishes`, against which a server's latency
//!   and CPU are read.
//! - `hostile`: N clients that subscribe many times to a deployment with
//!   a long replay and never read; the server's memory growth per
//!   connection (its worst case, bounded by the queue budgets).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use o1_common::Level;
use o1_common::wire::{self, Item, LogRecord};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "o1-loadgen", about = "Load generator for o1-relay benchmarks")]
struct Cli {
    /// PIDs of the server processes whose CPU and memory are measured.
    #[arg(long = "pid", global = true)]
    pids: Vec<u32>,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    Fanout {
        /// WebSocket URL to subscribe to; several, separated by commas,
        /// spread the subscribers over them (relays of a cluster).
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Message text size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// o1 relay: QUIC uplink address, CA file and token of an agent.
        #[arg(long)]
        uplink: Option<String>,
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        #[arg(long)]
        token: Option<String>,
        /// nchan: HTTP publisher URL (instead of the QUIC uplink).
        #[arg(long)]
        nchan_publish: Option<String>,
        /// The server publishes by itself (`floor-server`): only subscribe
        /// and measure.
        #[arg(long)]
        server_publishes: bool,
        /// Messages per publish batch (o1) or concurrent POSTs (nchan).
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Paced mode: this many messages per second, each alone (one line
        /// per batch, as an agent at that rate sends; one POST for nchan),
        /// instead of as fast as the subscribers absorb. Each message is
        /// sent at its slot ± up to a fifth of a period (uniform): the mean
        /// rate is exact, the phase random.
        #[arg(long)]
        rate: Option<u64>,
    },
    FloorServer {
        /// Address to listen on (`host:port`).
        #[arg(long)]
        listen: String,
        /// Starts publishing once this many subscribers are connected.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        /// Messages per second, paced as `fanout --rate` paces.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Message text size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    Hostile {
        /// WebSocket URL.
        #[arg(long)]
        url: String,
        /// REST base URL (`http://host:port`) and a publisher token, to
        /// create the deployment.
        #[arg(long)]
        http: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        subscriptions: usize,
        #[arg(long, default_value_t = 1000)]
        lines: usize,
        #[arg(long, default_value_t = 1024)]
        line_bytes: usize,
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    FileLatency {
        /// WebSocket URL of the relay.
        #[arg(long)]
        url: String,
        /// The file the agent tails (appended to).
        #[arg(long)]
        file: std::path::PathBuf,
        /// The agent's host name, for the subscription.
        #[arg(long)]
        host: String,
        /// Lines per second, spread evenly.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    HalfOpen {
        #[arg(long)]
        uplink: String,
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long, default_value_t = 20)]
        connections: usize,
        /// Streams each connection tries to open.
        #[arg(long, default_value_t = 4)]
        streams: usize,
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    ReplayStall {
        #[arg(long)]
        url: String,
        #[arg(long)]
        uplink: String,
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long)]
        token: String,
        /// History: applications of one host, lines each.
        #[arg(long, default_value_t = 200)]
        sources: usize,
        #[arg(long, default_value_t = 1000)]
        lines: usize,
        /// Replays: clients × subscriptions each, `tail` lines each.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        subscriptions: usize,
        #[arg(long, default_value_t = 1000)]
        tail: u64,
        /// A `search` for every replay (the filtered path).
        #[arg(long)]
        search: Option<String>,
    },
    /// Replay speed from the history log: subscribes with `since` the
    /// oldest offset and counts lines until `lines` arrived.
    Resume {
        #[arg(long)]
        url: String,
        #[arg(long)]
        lines: u64,
    },
    Ingest {
        #[arg(long)]
        uplink: String,
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1)]
        agents: usize,
        /// Lines per agent.
        #[arg(long, default_value_t = 500_000)]
        lines: u64,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

/// utime + stime of the processes, seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let (user, system) = cpu_split(pids);
    user + system
}

/// Resident memory of the processes, bytes.
fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .sum()
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A simulated agent for `host` (a fresh agent id each run, so the relay's
/// duplicate detection starts from zero).
fn agent_settings(
    uplink: &str,
    ca: &std::path::Path,
    token: &str,
    host: &str,
    application: &str,
) -> o1_agent::uplink::UplinkSettings {
    o1_agent::uplink::UplinkSettings {
        addresses: vec![uplink.to_owned()],
        ack_timeout: Duration::from_secs(2),
        server_name: Some("localhost".into()),
        ca: Some(ca.to_owned()),
        insecure_skip_verify: false,
        token: token.to_owned(),
        client_cert: None,
        host: host.to_owned(),
        agent_id: format!("{host}-{}", now_nanos()),
        applications: vec![application.into()],
        idle_timeout: Duration::from_secs(10),
        max_frame: wire::DEFAULT_MAX_FRAME,
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A fan-out's subscribers read on threads of their own (`Readers`);
    // what is left (the publisher, its QUIC endpoint, the clock) runs on
    // one thread, so that it wakes no second worker per message on the
    // cores the servers measured use.
    let runtime = match cli.command {
        Mode::Fanout { .. } | Mode::FloorServer { .. } => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Mode::Idle { url, connections } => idle(&url, connections, &cli.pids).await,
        Mode::FloorServer {
            listen,
            subscribers,
            messages,
            rate,
            size,
        } => {
            tokio::task::spawn_blocking(move || {
                let listener = std::net::TcpListener::bind(&listen)
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!("floor-server listening on {}", listener.local_addr()?);
                floor_server(&listener, subscribers, messages, rate, size)
            })
            .await?
        }
        Mode::FileLatency {
            url,
            file,
            host,
            rate,
            seconds,
        } => file_latency(&url, &file, &host, rate, seconds).await,
        Mode::HalfOpen {
            uplink,
            ca,
            connections,
            streams,
            hold_secs,
        } => {
            let settings = agent_settings(&uplink, &ca, "", "half-open", "app");
            half_open(settings, connections, streams, hold_secs, &cli.pids).await
        }
        Mode::ReplayStall {
            url,
            uplink,
            ca,
            token,
            sources,
            lines,
            clients,
            subscriptions,
            tail,
            search,
        } => {
            let settings = agent_settings(&uplink, &ca, &token, "replay-stall", "app-0");
            replay_stall(
                &url,
                settings,
                (sources, lines),
                (clients, subscriptions, tail),
                search,
            )
            .await
        }
        Mode::Hostile {
            url,
            http,
            token,
            connections,
            subscriptions,
            lines,
            line_bytes,
            settle_secs,
        } => {
            let replay = Replay {
                lines,
                line_bytes,
                subscriptions,
            };
            hostile(
                &url,
                &http,
                &token,
                connections,
                replay,
                settle_secs,
                &cli.pids,
            )
            .await
        }
        Mode::Fanout {
            url,
            subscribers,
            messages,
            size,
            uplink,
            ca,
            token,
            nchan_publish,
            server_publishes,
            batch,
            rate,
        } => {
            let publisher = match (nchan_publish, uplink, ca, token) {
                _ if server_publishes => Publisher::Server,
                (Some(url), _, _, _) => Publisher::Nchan(url),
                (None, Some(uplink), Some(ca), Some(token)) => Publisher::O1 { uplink, ca, token },
                _ => bail!(
                    "give --nchan-publish URL, or --uplink, --ca and --token, or --server-publishes"
                ),
            };
            fanout(
                &url,
                subscribers,
                messages,
                size,
                publisher,
                Pace {
                    batch: if rate.is_some() { 1 } else { batch },
                    rate,
                },
                &cli.pids,
            )
            .await
        }
        Mode::Ingest {
            uplink,
            ca,
            token,
            agents,
            lines,
            batch,
        } => ingest(&uplink, &ca, &token, agents, lines, batch, &cli.pids).await,
        Mode::Resume { url, lines } => resume(&url, lines, &cli.pids).await,
    }
}

async fn resume(url: &str, lines: u64, pids: &[u32]) -> Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await?;
    // The epoch comes with any `subscribed`.
    ws.send(Message::text(r#"{"type":"subscribe-logs","host":"none"}"#))
        .await?;
    let mut epoch = 0u64;
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            let value: serde_json::Value = serde_json::from_str(text.as_str())?;
            if value["type"] == "subscribed" {
                epoch = value["epoch"].as_u64().unwrap_or(0);
                break;
            }
        }
    }
    let cpu_before = cpu_seconds(pids);
    let started = Instant::now();
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe-logs","since":{{"offset":0,"epoch":{epoch}}}}}"#
    )))
    .await?;
    // `since` offset 0: everything after the first line.
    let lines = lines.saturating_sub(1);
    let mut received = 0u64;
    while received < lines {
        let Some(message) = ws.next().await else {
            break;
        };
        if let Message::Text(text) = message?
            && text.as_str().contains(r#""type":"log""#)
        {
            received += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pids) - cpu_before;
    println!(
        "resume lines={received} elapsed={elapsed:.2}s rate={:.0}/s server_cpu={cpu:.2}s",
        received as f64 / elapsed
    );
    Ok(())
}

async fn half_open(
    settings: o1_agent::uplink::UplinkSettings,
    connections: usize,
    streams: usize,
    hold_secs: u64,
    pids: &[u32],
) -> Result<()> {
    let endpoint = o1_agent::uplink::endpoint(&settings)?;
    let address: std::net::SocketAddr = settings.addresses[0].parse()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(pids);
    let mut held = Vec::new();
    let mut kept = Vec::new();
    let mut opened = 0usize;
    for _ in 0..connections {
        let connection = endpoint.connect(address, "localhost")?.await?;
        for _ in 0..streams {
            // The server grants streams: wait a moment for each.
            match tokio::time::timeout(Duration::from_millis(200), connection.open_bi()).await {
                Ok(Ok((mut send, recv))) => {
                    // A hello frame that claims 3 MiB, 1.2 MB of it (about
                    // a stream's flow-control window), then silence.
                    let mut start = (3u32 << 20).to_be_bytes().to_vec();
                    start.extend_from_slice(&wire::MAGIC);
                    start.push(wire::PROTOCOL_VERSION);
                    start.resize(1_200_000, 0);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), send.write_all(&start)).await;
                    held.push((send, recv));
                    opened += 1;
                }
                _ => break,
            }
        }
        kept.push(connection);
    }
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let after = rss_bytes(pids);
    println!(
        "half-open connections={connections} streams_opened={opened} rss_before={:.1}MiB rss_after={:.1}MiB growth={:.1}MiB per_connection={:.1}KiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1024.0 / connections as f64
    );
    Ok(())
}

async fn replay_stall(
    url: &str,
    settings: o1_agent::uplink::UplinkSettings,
    (sources, lines): (usize, usize),
    (clients, subscriptions, tail): (usize, usize, u64),
    search: Option<String>,
) -> Result<()> {
    let endpoint = o1_agent::uplink::endpoint(&settings)?;
    let mut session =
        o1_agent::uplink::connect(&endpoint, &settings, &settings.addresses[0]).await?;
    let mut sequence = 0u64;
    let batch = |sequence: u64, application: String, n: usize| {
        let items = (0..n)
            .map(|i| {
                Item::Log(LogRecord {
                    application: application.clone(),
                    timestamp_ms: 0,
                    level: Level::Info,
                    message: format!("2026-11-28T14:00:00Z INFO GET /items/{i} 200 3.1ms"),
                    deployment_id: None,
                })
            })
            .collect();
        wire::encode_batch(sequence, items, 0, wire::DEFAULT_MAX_FRAME)
    };
    for source in 0..sources {
        sequence += 1;
        let frame = batch(sequence, format!("app-{source}"), lines)?;
        session.send_frame(&frame).await?;
        session.next_ack().await?;
    }
    // Replays, concurrently with the publishes below.
    let url = url.to_owned();
    let replays = tokio::spawn(async move {
        let mut sockets = Vec::new();
        for _ in 0..clients {
            let (socket, _) = tokio_tungstenite::connect_async(&url).await?;
            sockets.push(socket);
        }
        for n in 0..subscriptions {
            for socket in sockets.iter_mut() {
                let mut request =
                    serde_json::json!({"type": "subscribe-logs", "tail": tail, "requestId": n});
                if let Some(search) = &search {
                    request["search"] = serde_json::Value::from(search.as_str());
                }
                socket.send(Message::text(request.to_string())).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        anyhow::Ok(())
    });
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        sequence += 1;
        let frame = batch(sequence, "app-0".into(), 1)?;
        let sent = Instant::now();
        session.send_frame(&frame).await?;
        session.next_ack().await?;
        latencies.record(sent.elapsed().as_micros() as u64)?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replays.await??;
    println!(
        "replay-stall history={} replays={} publishes={} ack_p50={:.2}ms ack_p99={:.2}ms ack_max={:.2}ms",
        sources * lines,
        clients * subscriptions,
        latencies.len(),
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0
    );
    Ok(())
}

/// What each hostile client asks for.
#[derive(Debug, Clone, Copy)]
struct Replay {
    lines: usize,
    line_bytes: usize,
    subscriptions: usize,
}

async fn hostile(
    url: &str,
    http: &str,
    token: &str,
    connections: usize,
    replay: Replay,
    settle_secs: u64,
    pids: &[u32],
) -> Result<()> {
    let client = reqwest::Client::new();
    let id = format!("hostile-{}", now_nanos());
    let created = client
        .post(format!("{http}/api/deployments"))
        .bearer_auth(token)
        .json(&serde_json::json!({"deploymentId": id, "application": "web"}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("cannot create the deployment: {}", created.status());
    }
    for chunk in 0..replay.lines.div_ceil(100) {
        let logs: Vec<serde_json::Value> = (0..100.min(replay.lines - chunk * 100))
            .map(|i| serde_json::json!({"message": format!("{chunk:04}{i:03} {}", "x".repeat(replay.line_bytes.saturating_sub(8)))}))
            .collect();
        client
            .post(format!("{http}/api/deployments/{id}/events"))
            .bearer_auth(token)
            .json(&serde_json::json!({"logs": logs}))
            .send()
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pids);
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        for n in 0..replay.subscriptions {
            let text = serde_json::json!({"type": "subscribe", "deploymentId": id, "requestId": n})
                .to_string();
            socket.send(Message::text(text)).await?;
        }
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let after = rss_bytes(pids);
    let asked = replay.subscriptions * replay.lines * replay.line_bytes;
    println!(
        "hostile connections={connections} asked_per_connection={:.1}MiB rss_before={:.1}MiB rss_after={:.1}MiB growth={:.1}MiB per_connection={:.2}MiB",
        asked as f64 / 1048576.0,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1048576.0 / connections as f64
    );
    drop(sockets);
    Ok(())
}

async fn idle(url: &str, connections: usize, pids: &[u32]) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pids);
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connection {i}"))?;
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(pids);
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    println!(
        "idle connections={connections} rss_before={:.1}MiB rss_after={:.1}MiB per_connection={:.2}KiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    );
    drop(sockets);
    Ok(())
}

enum Publisher {
    O1 {
        uplink: String,
        ca: std::path::PathBuf,
        token: String,
    },
    Nchan(String),
    /// The server sends by itself (`floor-server`).
    Server,
}

/// Lines as hosts write them, each carrying `seq=<n> t=<nanos>`.
fn realistic_line(n: u64, sent: u64) -> String {
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "ERROR"];
    let level = LEVELS[(n % 4) as usize];
    let at = o1_common::Timestamp::from_unix_millis((sent / 1_000_000) as i64);
    format!(
        "{at} {level} api GET /api/v1/items/{} 200 {}.{}ms {{\"user\":\"u{}\",\"region\":\"eu-west-1\"}} seq={n} t={sent}\n",
        n % 997,
        n % 50,
        n % 10,
        n % 101
    )
}

async fn file_latency(
    url: &str,
    file: &std::path::Path,
    host: &str,
    rate: u64,
    seconds: u64,
) -> Result<()> {
    use std::io::Write;
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    let subscribe = serde_json::json!({"type": "subscribe-logs", "host": host});
    socket.send(Message::text(subscribe.to_string())).await?;
    let _ack = tokio::time::timeout(Duration::from_secs(5), socket.next()).await?;
    let total = rate * seconds;
    let reader = tokio::spawn(async move {
        let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut seen = 0u64;
        while seen < total {
            let message = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = message else {
                break;
            };
            let received = now_nanos();
            let Some(at) = text.as_str().find(" t=") else {
                continue;
            };
            let rest = &text.as_str()[at + 3..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if let Ok(sent) = rest[..end].parse::<u64>() {
                latencies.saturating_record((received.saturating_sub(sent) / 1000).max(1));
                seen += 1;
            }
        }
        anyhow::Ok((seen, latencies))
    });
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    let started = Instant::now();
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    for n in 0..total {
        let due = started + every * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        // One write per line, as an application logging line by line.
        out.write_all(realistic_line(n, now_nanos()).as_bytes())?;
    }
    let (seen, latencies) = reader.await??;
    println!(
        "file-latency rate={rate}/s lines={total} received={seen} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0,
    );
    Ok(())
}

/// The nanosecond stamp after "bench " in a delivered payload.
fn bench_stamp(payload: &[u8]) -> Option<u64> {
    const MARK: &[u8] = b"bench ";
    let at = payload.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut stamp = 0u64;
    for digit in digits {
        stamp = stamp
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some(stamp)
}

/// A WebSocket subscriber that reads server frames off the socket itself:
/// the load generator shares the machine with the server, and a full
/// WebSocket client costs it ~12 µs of CPU per message at 1,000 × 100/s
/// (more than the server), which put its own queueing into the latency
/// it reports. Frames from a server are never masked; only text and
/// binary payloads are passed on; fragments are not expected (the servers
/// measured send each message as one frame). The buffer starts at 4 KiB
/// and doubles when a frame needs it: 1,000 subscribers' buffers then fit
/// in the caches a delivery's `recv` goes through.
struct RawSubscriber {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` consumed by the previous `read_frames`.
    consumed: usize,
    filled: usize,
}

impl RawSubscriber {
    /// Opens `url` (`ws://host:port/path`), and sends `subscribe` as a
    /// text message, waiting for its reply.
    async fn connect(url: &str, subscribe: Option<&str>) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut buffer = vec![0u8; 4 * 1024];
        let mut filled = 0;
        let end = loop {
            let n = stream.read(&mut buffer[filled..]).await?;
            if n == 0 {
                bail!("{url}: closed during the handshake");
            }
            filled += n;
            if let Some(at) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if filled == buffer.len() {
                if buffer.len() >= 64 * 1024 {
                    bail!("{url}: handshake answer too long");
                }
                buffer.resize(buffer.len() * 2, 0);
            }
        };
        if !buffer.starts_with(b"HTTP/1.1 101") {
            bail!(
                "{url}: {}",
                String::from_utf8_lossy(&buffer[..end])
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
        buffer.copy_within(end..filled, 0);
        let mut subscriber = RawSubscriber {
            stream,
            buffer,
            consumed: 0,
            filled: filled - end,
        };
        if let Some(text) = subscribe {
            // Client frames are masked; a zero key leaves the text as is.
            let mut frame = vec![0x81];
            match u8::try_from(text.len()) {
                Ok(short) if short < 126 => frame.push(0x80 | short),
                _ => {
                    frame.push(0x80 | 126);
                    frame.extend_from_slice(&u16::try_from(text.len())?.to_be_bytes());
                }
            }
            frame.extend_from_slice(&[0, 0, 0, 0]);
            frame.extend_from_slice(text.as_bytes());
            subscriber.stream.write_all(&frame).await?;
            if subscriber.read_frames(|_| ()).await? == 0 {
                bail!("{url}: no reply to the subscription");
            }
        }
        Ok(subscriber)
    }

    /// Waits for at least one whole frame; passes the payload of each
    /// whole text or binary frame read to `each` and returns how many
    /// there were.
    async fn read_frames(&mut self, mut each: impl FnMut(&[u8])) -> Result<usize> {
        use tokio::io::AsyncReadExt;
        // Drop what the caller has seen; keep a partial frame.
        self.buffer.copy_within(self.consumed..self.filled, 0);
        self.filled -= self.consumed;
        self.consumed = 0;
        loop {
            let mut at = 0;
            let mut frames = 0;
            while let Some((opcode, start, end)) = frame_at(&self.buffer[at..self.filled]) {
                if opcode == 1 || opcode == 2 {
                    each(&self.buffer[at + start..at + end]);
                    frames += 1;
                }
                at += end;
            }
            if at > 0 {
                self.consumed = at;
                return Ok(frames);
            }
            if self.filled == self.buffer.len() {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buffer[self.filled..]).await?;
            if n == 0 {
                bail!("closed");
            }
            self.filled += n;
        }
    }
}

/// The first whole server frame of `bytes`: (opcode, payload start,
/// frame end).
fn frame_at(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (len, start): (usize, usize) = match second & 0x7f {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let end = start.checked_add(len)?;
    (bytes.len() >= end).then_some((first & 0x0f, start, end))
}

/// The fan-out's subscribers, read on threads of their own, one per core,
/// each a current-thread runtime with its own epoll: no work stealing and
/// no wake-up of another worker per socket, and each thread records
/// latencies into one histogram (hot in its cache) instead of one per
/// subscriber (1,000 histograms of 128 KiB: a cache miss per record).
struct Readers {
    /// Messages received by all subscribers so far.
    received: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<Result<hdrhistogram::Histogram<u64>>>>,
}

impl Readers {
    /// Connects `subscribers` spread over `urls` (sending `subscribe` on
    /// each), and has each read until it has `messages` messages; returns
    /// once every one is connected.
    async fn start(
        urls: &[String],
        subscribers: usize,
        subscribe: Option<&'static str>,
        messages: u64,
    ) -> Result<Readers> {
        let count = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .min(subscribers.max(1));
        let received = Arc::new(AtomicU64::new(0));
        let (stop, _) = tokio::sync::watch::channel(false);
        let (ready, mut connected) = tokio::sync::mpsc::channel::<Result<()>>(count);
        let mut threads = Vec::new();
        for k in 0..count {
            let mine: Vec<String> = (k..subscribers)
                .step_by(count)
                .map(|i| urls[i % urls.len()].clone())
                .collect();
            let (received, mut stop, ready) = (received.clone(), stop.subscribe(), ready.clone());
            let thread =
                std::thread::Builder::new()
                    .name(format!("reader-{k}"))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        let local = tokio::task::LocalSet::new();
                        local.block_on(&runtime, async move {
                            let mut sockets = Vec::with_capacity(mine.len());
                            for url in &mine {
                                match RawSubscriber::connect(url, subscribe).await {
                                    Ok(socket) => sockets.push(socket),
                                    Err(error) => {
                                        let _ = ready.send(Err(error)).await;
                                        bail!("reader-{k}: a subscriber could not connect");
                                    }
                                }
                            }
                            let _ = ready.send(Ok(())).await;
                            let histogram = std::rc::Rc::new(std::cell::RefCell::new(
                                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
                            ));
                            let tasks: Vec<_> = sockets
                                .into_iter()
                                .map(|socket| {
                                    let (histogram, received) =
                                        (histogram.clone(), received.clone());
                                    tokio::task::spawn_local(read_stamps(
                                        socket, messages, histogram, received,
                                    ))
                                })
                                .collect();
                            tokio::select! {
                                _ = futures_util::future::join_all(tasks) => {}
                                _ = stop.wait_for(|stop| *stop) => {}
                            }
                            Ok(histogram.borrow().clone())
                        })
                    })?;
            threads.push(thread);
        }
        drop(ready);
        let readers = Readers {
            received,
            stop,
            threads,
        };
        for _ in 0..count {
            connected
                .recv()
                .await
                .context("a reader thread ended before its subscribers connected")??;
        }
        Ok(readers)
    }

    /// Stops every subscriber; the latencies they recorded.
    async fn finish(self) -> Result<hdrhistogram::Histogram<u64>> {
        let _ = self.stop.send(true);
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for thread in threads {
                let histogram = thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
                all.add(histogram)?;
            }
            Ok(all)
        })
        .await?
    }
}

/// Reads `socket` until `messages` stamped messages came; records each
/// one's latency (from the stamp to the `recv` that brought it).
async fn read_stamps(
    mut socket: RawSubscriber,
    messages: u64,
    histogram: std::rc::Rc<std::cell::RefCell<hdrhistogram::Histogram<u64>>>,
    received: Arc<AtomicU64>,
) {
    let mut count = 0u64;
    while count < messages {
        let mut stamps = 0u64;
        let mut now = None;
        let read = socket
            .read_frames(|payload| {
                // "bench <nanos> ..." inside the JSON (o1) or the body (nchan).
                if let Some(sent) = bench_stamp(payload) {
                    let now = *now.get_or_insert_with(now_nanos);
                    // Borrowed only here, between two awaits of the thread.
                    histogram
                        .borrow_mut()
                        .saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    stamps += 1;
                }
            })
            .await;
        if read.is_err() {
            break;
        }
        count += stamps;
        received.fetch_add(stamps, Ordering::Relaxed);
    }
}

/// When message `sent` goes at `rate` per second, from the start: its slot
/// moved by a uniform offset of up to a fifth of a period either way. The
/// mean rate is exact, consecutive messages stay at least 0.6 periods
/// apart, but the phase is random. A strictly periodic 100/s pace aliases
/// with the kernel's 250 Hz tick, which splits CPU time into user and
/// system by sampling: the split then depends on the phase a run happens
/// to start at (seen: 0.3 vs 0.5 µs of user time per delivery for the
/// same build). At 100/s the offset spans 4 ms, one whole tick.
fn paced_slot(rate: u64, sent: u64) -> Duration {
    let period = 1_000_000_000 / rate.max(1);
    let spread = (period * 2 / 5).max(1);
    let offset = rand::random_range(0..spread) as i64 - (spread / 2) as i64;
    Duration::from_nanos(((sent * period) as i64 + offset).max(0) as u64)
}

/// `floor-server`: accepts `subscribers` WebSocket upgrades on `listener`,
/// then sends `messages` text frames of `size` bytes (each "bench
/// <nanos> ...", stamped with its slot) to all of them at `rate`,
/// every pass split across one scoped thread per core as the relay's
/// fan-out is, with one blocking `send` per socket. Nothing is parsed,
/// routed, queued or counted: what it costs is the kernel's, and the
/// latency a client measures against it is this machine's floor.
fn floor_server(
    listener: &std::net::TcpListener,
    subscribers: usize,
    messages: u64,
    rate: u64,
    size: usize,
) -> Result<()> {
    use std::io::{Read, Write};
    let mut sockets = Vec::with_capacity(subscribers);
    while sockets.len() < subscribers {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut chunk)?;
            if n == 0 || request.len() > 16 * 1024 {
                bail!("a client closed or sent too much before its upgrade");
            }
            request.extend_from_slice(&chunk[..n]);
        }
        // A load generator's client checks only the status line.
        socket.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )?;
        sockets.push(socket);
    }
    // The client starts its clock half a second after its last connect.
    std::thread::sleep(Duration::from_secs(1));
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let part = sockets.len().div_ceil(threads);
    let padding = "p".repeat(size.saturating_sub(32));
    let started = Instant::now();
    for sent in 0..messages {
        let due = started + paced_slot(rate, sent);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Stamped with its slot, as a publisher stamps a message when its
        // time comes: a message whose slot came during the previous pass
        // counts the wait for it, as it does for a server that queues it.
        let late = Instant::now().saturating_duration_since(due);
        let stamp = now_nanos().saturating_sub(late.as_nanos() as u64);
        let payload = format!("bench {stamp} {padding}");
        // The relay's own header for a server frame.
        let mut header = [0u8; 10];
        let used = o1_relay::hub::outbound::frame_header(payload.len(), &mut header);
        let mut frame = header[..used].to_vec();
        frame.extend_from_slice(payload.as_bytes());
        std::thread::scope(|scope| {
            for share in sockets.chunks(part.max(1)) {
                let frame = &frame;
                scope.spawn(move || {
                    for mut socket in share {
                        // A subscriber that went away is not the floor's
                        // business; the client reports what it missed.
                        let _ = socket.write_all(frame);
                    }
                });
            }
        });
    }
    // Time for the client to read the last message before the sockets go.
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// How the fan-out publisher sends: `batch` messages at a time, as fast as
/// the subscribers absorb, or (`rate`) that many messages per second.
#[derive(Debug, Clone, Copy)]
struct Pace {
    batch: usize,
    rate: Option<u64>,
}

impl Pace {
    /// Waits until the publisher may send message `sent` (of `received`
    /// deliveries so far, to `subscribers`).
    async fn wait(&self, started: Instant, sent: u64, received: &AtomicU64, subscribers: usize) {
        match self.rate {
            Some(rate) => {
                // Jittered around its slot (`paced_slot`).
                let due = started + paced_slot(rate, sent);
                tokio::time::sleep_until(due.into()).await;
            }
            None => {
                // Pace to what subscribers absorb, so nothing is dropped.
                let ahead = subscribers as u64 * self.batch as u64 * 4;
                while received.load(Ordering::Relaxed) + ahead < sent * subscribers as u64 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
    }
}

/// utime and stime of the processes, seconds.
fn cpu_split(pids: &[u32]) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime / ticks, stime / ticks))
        })
        .fold((0.0, 0.0), |(u, s), (du, ds)| (u + du, s + ds))
}

async fn fanout(
    url: &str,
    subscribers: usize,
    messages: u64,
    size: usize,
    publisher: Publisher,
    pace: Pace,
    pids: &[u32],
) -> Result<()> {
    let batch = pace.batch;
    let subscribe = matches!(publisher, Publisher::O1 { .. })
        .then_some(r#"{"type":"subscribe-logs","application":"bench"}"#);
    let urls: Vec<String> = url.split(',').map(str::to_owned).collect();
    let readers = Readers::start(&urls, subscribers, subscribe, messages).await?;
    let received = readers.received.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let padding = "p".repeat(size.saturating_sub(32));
    let cpu_before = cpu_seconds(pids);
    let split_before = cpu_split(pids);
    let started = Instant::now();
    match publisher {
        Publisher::O1 { uplink, ca, token } => {
            let settings = agent_settings(&uplink, &ca, &token, "bench-host", "bench");
            let endpoint = o1_agent::uplink::endpoint(&settings)?;
            let mut session =
                o1_agent::uplink::connect(&endpoint, &settings, &settings.addresses[0]).await?;
            let mut sequence = 0u64;
            let mut sent = 0u64;
            while sent < messages {
                let n = (batch as u64).min(messages - sent);
                let items = (0..n)
                    .map(|_| {
                        Item::Log(LogRecord {
                            application: "bench".into(),
                            timestamp_ms: 0,
                            level: Level::Info,
                            message: format!("bench {} {padding}", now_nanos()),
                            deployment_id: None,
                        })
                    })
                    .collect();
                sequence += 1;
                let frame = wire::encode_batch(sequence, items, 0, wire::DEFAULT_MAX_FRAME)?;
                session.send_frame(&frame).await?;
                session.next_ack().await?;
                sent += n;
                pace.wait(started, sent, &received, subscribers).await;
            }
        }
        Publisher::Server => {}
        Publisher::Nchan(publish) => {
            let client = reqwest::Client::new();
            let mut sent = 0u64;
            while sent < messages {
                let n = (batch as u64).min(messages - sent);
                let posts = (0..n).map(|_| {
                    client
                        .post(&publish)
                        .body(format!("bench {} {padding}", now_nanos()))
                        .send()
                });
                for result in futures_util::future::join_all(posts).await {
                    result?.error_for_status()?;
                }
                sent += n;
                pace.wait(started, sent, &received, subscribers).await;
            }
        }
    }
    let expected = messages * subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pids) - cpu_before;
    let split = cpu_split(pids);
    let (user, system) = (split.0 - split_before.0, split.1 - split_before.1);
    let histogram = readers.finish().await?;
    let delivered = received.load(Ordering::Relaxed);
    println!(
        "fanout subscribers={subscribers} messages={messages} paced={} delivered={delivered}/{expected} elapsed={elapsed:.2}s rate={:.0}/s p50={:.2}ms p99={:.2}ms server_cpu={cpu:.2}s cpu_per_delivered={:.2}us user_per_delivered={:.2}us system_per_delivered={:.2}us",
        pace.rate.map_or("no".to_owned(), |r| format!("{r}/s")),
        delivered as f64 / elapsed,
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        cpu / delivered.max(1) as f64 * 1e6,
        user / delivered.max(1) as f64 * 1e6,
        system / delivered.max(1) as f64 * 1e6
    );
    Ok(())
}

async fn ingest(
    uplink: &str,
    ca: &std::path::Path,
    token: &str,
    agents: usize,
    lines: u64,
    batch: usize,
    pids: &[u32],
) -> Result<()> {
    let cpu_before = cpu_seconds(pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..agents {
        let settings = agent_settings(uplink, ca, token, &format!("ingest-{a}"), "app");
        tasks.push(tokio::spawn(async move {
            let endpoint = o1_agent::uplink::endpoint(&settings)?;
            let mut session =
                o1_agent::uplink::connect(&endpoint, &settings, &settings.addresses[0]).await?;
            let line = "x".repeat(100);
            // Pre-encode one frame body per batch size; only the sequence differs.
            let mut sequence = 0u64;
            let mut sent = 0u64;
            let mut in_flight = 0u32;
            while sent < lines {
                let n = (batch as u64).min(lines - sent);
                let items: Vec<Item> = (0..n)
                    .map(|_| {
                        Item::Log(LogRecord {
                            application: "app".into(),
                            timestamp_ms: 0,
                            level: Level::Info,
                            message: line.clone(),
                            deployment_id: None,
                        })
                    })
                    .collect();
                sequence += 1;
                let frame = wire::encode_batch(sequence, items, 0, wire::DEFAULT_MAX_FRAME)?;
                session.send_frame(&frame).await?;
                sent += n;
                in_flight += 1;
                while in_flight >= 8 {
                    let acked = session.next_ack().await?;
                    in_flight = (sequence - acked) as u32;
                }
            }
            while in_flight > 0 {
                let acked = session.next_ack().await?;
                in_flight = (sequence - acked) as u32;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pids) - cpu_before;
    println!(
        "ingest agents={agents} lines={total} elapsed={elapsed:.2}s rate={:.0}/s server_cpu={cpu:.2}s cpu_per_million={:.2}s",
        total as f64 / elapsed,
        cpu / (total as f64 / 1e6)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor server and the fan-out's readers against each other:
    /// every subscriber gets every message once, each read as a stamped
    /// frame (short and 16-bit lengths both) with its latency recorded.
    #[test]
    fn every_subscriber_reads_every_stamped_message_of_the_floor_server() -> Result<()> {
        for size in [60, 300] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let url = format!("ws://{}/", listener.local_addr()?);
            let server = std::thread::spawn(move || floor_server(&listener, 5, 7, 200, size));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let histogram = runtime.block_on(async {
                let readers = Readers::start(&[url], 5, None, 7).await?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while readers.received.load(Ordering::Relaxed) < 35 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                readers.finish().await
            })?;
            assert_eq!(histogram.len(), 35, "size {size}");
            // Stamped by this machine's clock moments before: not zero,
            // not the age of the epoch.
            assert!(
                histogram.max() < 10_000_000,
                "size {size}: {}",
                histogram.max()
            );
            server
                .join()
                .map_err(|_| anyhow::anyhow!("floor server panicked"))??;
        }
        Ok(())
    }

    #[test]
    fn a_stamp_is_the_number_after_the_bench_mark() {
        assert_eq!(
            bench_stamp(b"{\"host\":\"bench-host\",\"message\":\"bench 1234 pp\"}"),
            Some(1234)
        );
        assert_eq!(bench_stamp(b"no mark here"), None);
    }
}
