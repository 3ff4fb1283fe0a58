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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Mode::Idle { url, connections } => idle(&url, connections, &cli.pids).await,
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
            batch,
            rate,
        } => {
            let publisher = match (nchan_publish, uplink, ca, token) {
                (Some(url), _, _, _) => Publisher::Nchan(url),
                (None, Some(uplink), Some(ca), Some(token)) => Publisher::O1 { uplink, ca, token },
                _ => bail!("give --nchan-publish URL, or --uplink, --ca and --token"),
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
/// binary payloads are returned; fragments are not expected (the servers
/// measured send each message as one frame).
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
        let mut buffer = vec![0u8; 64 * 1024];
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
                bail!("{url}: handshake answer too long");
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
            if subscriber.read_frames().await?.is_empty() {
                bail!("{url}: no reply to the subscription");
            }
        }
        Ok(subscriber)
    }

    /// Waits for at least one whole frame; returns the payloads of the
    /// whole text or binary frames read.
    async fn read_frames(&mut self) -> Result<Vec<&[u8]>> {
        use tokio::io::AsyncReadExt;
        // Drop what the caller has seen; keep a partial frame.
        self.buffer.copy_within(self.consumed..self.filled, 0);
        self.filled -= self.consumed;
        self.consumed = 0;
        loop {
            let mut at = 0;
            let mut frames = Vec::new();
            while let Some((opcode, start, end)) = frame_at(&self.buffer[at..self.filled]) {
                if opcode == 1 || opcode == 2 {
                    frames.push((at + start, at + end));
                }
                at += end;
            }
            if at > 0 {
                self.consumed = at;
                return Ok(frames
                    .into_iter()
                    .map(|(s, e)| &self.buffer[s..e])
                    .collect());
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
                // Message `sent`'s slot at the fixed rate, moved by a
                // uniform offset of up to a fifth of a period either way:
                // the mean rate is exact, consecutive messages stay at
                // least 0.6 periods apart, but the phase is random. A
                // strictly periodic 100/s pace aliases with the kernel's
                // 250 Hz tick, which splits CPU time into user and system
                // by sampling: the split then depends on the phase a run
                // happens to start at (seen: 0.3 vs 0.5 µs of user time per
                // delivery for the same build). At 100/s the offset spans
                // 4 ms, one whole tick.
                let period = 1_000_000_000 / rate.max(1);
                let spread = (period * 2 / 5).max(1);
                let offset = rand::random_range(0..spread) as i64 - (spread / 2) as i64;
                let at = (sent * period) as i64 + offset;
                let due = started + Duration::from_nanos(at.max(0) as u64);
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
    let received = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ));
    let is_o1 = matches!(publisher, Publisher::O1 { .. });
    let mut tasks = Vec::new();
    let urls: Vec<&str> = url.split(',').collect();
    for i in 0..subscribers {
        let subscribe = is_o1.then_some(r#"{"type":"subscribe-logs","application":"bench"}"#);
        let mut socket = RawSubscriber::connect(urls[i % urls.len()], subscribe).await?;
        let received = received.clone();
        let histogram = histogram.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut count = 0u64;
            while count < messages {
                let Ok(payloads) = socket.read_frames().await else {
                    break;
                };
                let now = now_nanos();
                for payload in payloads {
                    // "bench <nanos> ..." inside the JSON (o1) or the body (nchan).
                    let Some(sent) = bench_stamp(payload) else {
                        continue;
                    };
                    if let Some(h) = local.as_mut() {
                        h.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    }
                    count += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let (Some(local), Ok(mut global)) = (local, histogram.lock()) {
                let _ = global.add(local);
            }
        }));
    }
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
    for task in tasks {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delivered = received.load(Ordering::Relaxed);
    let histogram = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?;
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
