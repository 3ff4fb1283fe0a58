//! Shared fixtures for the end-to-end tests: start the real `o1-relay` and
//! `o1-agent` binaries on free ports, and talk to them with real WebSocket,
//! HTTP and QUIC clients.
//!
//! The binaries are those of the workspace's target directory; the test
//! command (`scripts/test.sh`) builds them before running the tests.

// Test fixtures: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Path of a workspace binary (`target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// TLS material and a token made by `o1-relay certs`.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub token: String,
    pub token_sha256: String,
}

impl Pki {
    pub fn create(dir: &Path) -> Result<Pki> {
        let tls = dir.join("tls");
        let output = Command::new(binary("o1-relay"))
            .args(["certs", "--out"])
            .arg(&tls)
            .args(["--name", "localhost", "--name", "127.0.0.1"])
            .output()?;
        if !output.status.success() {
            bail!(
                "o1-relay certs failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = String::from_utf8(output.stdout)?;
        let quoted = |prefix: &str| -> Result<String> {
            let line = text
                .lines()
                .find(|l| l.starts_with(prefix))
                .ok_or_else(|| anyhow!("no `{prefix}` in certs output:\n{text}"))?;
            Ok(line.split('"').nth(1).unwrap_or_default().to_owned())
        };
        Ok(Pki {
            dir: tls,
            token: quoted("token = ")?,
            token_sha256: quoted("sha256 = ")?,
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}

/// A running `o1-relay`.
#[derive(Debug)]
pub struct Relay {
    child: Child,
    pub http: SocketAddr,
    pub uplink: SocketAddr,
    pub config: PathBuf,
    pub stderr: PathBuf,
}

impl Relay {
    /// Starts a relay with its own config in `dir`, on free ports, plus
    /// `extra` TOML lines (whole sections).
    pub fn start(dir: &Path, pki: &Pki, extra: &str) -> Result<Relay> {
        Self::start_on(dir, pki, extra, "127.0.0.1:0", "127.0.0.1:0")
    }

    pub fn start_on(dir: &Path, pki: &Pki, extra: &str, http: &str, uplink: &str) -> Result<Relay> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("relay.toml");
        let base = format!(
            "[http]\nlisten = \"{http}\"\n\n[uplink]\nlisten = \"{uplink}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[history]\ndir = \"{}\"\n\n[auth]\nbrowsers = \"open\"\n\n[[auth.token]]\nname = \"tests\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            pki.dir.join("relay.crt").display(),
            pki.dir.join("relay.key").display(),
            dir.join("history").display(),
            pki.token_sha256
        );
        std::fs::write(&config, merge_toml(&base, extra)?)?;
        Self::spawn(&config, dir)
    }

    fn spawn(config: &Path, dir: &Path) -> Result<Relay> {
        let stderr = dir.join(format!("relay-{}.log", unique()));
        let mut child = Command::new(binary("o1-relay"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .env("RUST_LOG", "info")
            .spawn()?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let line = read_first_line(stdout, Duration::from_secs(20)).with_context(|| {
            format!(
                "relay did not start; log: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        })?;
        let field = |name: &str| -> Result<SocketAddr> {
            let value = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .ok_or_else(|| anyhow!("no {name}= in `{line}`"))?;
            Ok(value.parse()?)
        };
        Ok(Relay {
            http: field("http")?,
            uplink: field("uplink")?,
            child,
            config: config.to_owned(),
            stderr,
        })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/websocket", self.http)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// SIGKILL, then start again on the same ports with the same config.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        self.kill();
        let text = std::fs::read_to_string(&self.config)?;
        let pinned = format!(
            "[http]\nlisten = \"{}\"\n[uplink]\nlisten = \"{}\"\n",
            self.http, self.uplink
        );
        std::fs::write(&self.config, merge_toml(&text, &pinned)?)?;
        let dir = self.config.parent().context("config dir")?.to_owned();
        let config = self.config.clone();
        respawn(self, || Self::spawn(&config, &dir))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit status once the process ended.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        signal(self.child.id(), rustix::process::Signal::TERM);
        wait_child(&mut self.child, timeout)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `o1-agent`.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pub config: PathBuf,
    pub stderr: PathBuf,
}

impl Agent {
    /// Writes `agent.toml` in `dir` (relay section filled in) and starts it.
    pub fn start(dir: &Path, pki: &Pki, relay: &Relay, host: &str, extra: &str) -> Result<Agent> {
        let config = Self::write_config(dir, pki, relay, host, extra)?;
        Self::spawn(&config, dir)
    }

    /// [`Agent::start`], then waits until the relay lists `host`: the start
    /// of most end-to-end tests.
    pub async fn start_listed(
        dir: &Path,
        pki: &Pki,
        relay: &Relay,
        host: &str,
        extra: &str,
    ) -> Result<Agent> {
        let agent = Self::start(dir, pki, relay, host, extra)?;
        wait_for_host(relay, host).await?;
        Ok(agent)
    }

    /// Writes `agent.toml` in `dir` and returns its path.
    pub fn write_config(
        dir: &Path,
        pki: &Pki,
        relay: &Relay,
        host: &str,
        extra: &str,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("agent.toml");
        let base = format!(
            "host = \"{host}\"\nstate_dir = \"{}\"\n\n[relay]\naddress = \"{}\"\nserver_name = \"localhost\"\nca = \"{}\"\ntoken = \"{}\"\nmin_backoff_ms = 100\nmax_backoff_ms = 1000\nidle_timeout_secs = 3\n",
            dir.join("state").display(),
            relay.uplink,
            pki.ca().display(),
            pki.token
        );
        std::fs::write(&config, merge_toml(&base, extra)?)?;
        Ok(config)
    }

    pub fn spawn(config: &Path, dir: &Path) -> Result<Agent> {
        let stderr = dir.join(format!("agent-{}.log", unique()));
        let child = Command::new(binary("o1-agent"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .env("RUST_LOG", "info")
            .spawn()?;
        Ok(Agent {
            child,
            config: config.to_owned(),
            stderr,
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        signal(self.child.id(), rustix::process::Signal::TERM);
        wait_child(&mut self.child, timeout)
    }

    /// SIGKILL and start again with the same config and state.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        self.kill();
        let dir = self.config.parent().context("config dir")?.to_owned();
        let agent = Self::spawn(&self.config, &dir)?;
        let old = std::mem::replace(self, agent);
        std::mem::forget(old);
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `base` with the tables of `extra` merged in, key by key.
pub fn merge_toml(base: &str, extra: &str) -> Result<String> {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(existing)), toml::Value::Table(more)) => {
                    merge(existing, more)
                }
                // Arrays of tables (`[[auth.token]]`) add up.
                (Some(toml::Value::Array(existing)), toml::Value::Array(more))
                    if existing.iter().chain(&more).all(toml::Value::is_table) =>
                {
                    existing.extend(more)
                }
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse()?;
    merge(&mut table, extra.parse()?);
    Ok(toml::to_string(&table)?)
}

/// Sends `signal` to the process `pid` (a child of the test).
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces a killed process's handle with a fresh one from `spawn`,
/// retrying for 10 s (its port may take a moment to be free again).
fn respawn<T>(target: &mut T, mut spawn: impl FnMut() -> Result<T>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match spawn() {
            Ok(fresh) => {
                // The old one is dead already: dropping it would kill
                // nothing but could reap a recycled pid.
                std::mem::forget(std::mem::replace(target, fresh));
                return Ok(());
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(e),
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn read_first_line(stdout: std::process::ChildStdout, timeout: Duration) -> Result<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(timeout)
        .map_err(|_| anyhow!("no output within {timeout:?}"))?;
    if line.is_empty() {
        bail!("process exited before printing its addresses");
    }
    Ok(line.trim().to_owned())
}

/// A WebSocket client as a browser script would use one.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsClient")
    }
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    Frame { code: u16, reason: String },
    WithoutFrame,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<WsClient> {
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(WsClient { stream })
    }

    pub async fn send_json(&mut self, value: Value) -> Result<()> {
        self.send_text(&value.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next JSON message, or an error on timeout or close.
    pub async fn recv_json(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.stream.next())
                .await
                .map_err(|_| anyhow!("no message within {timeout:?}"))?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match message {
                Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Messages until `predicate` matches one (returned last).
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "predicate not met within {timeout:?}; saw {} messages, last: {:?}",
                    seen.len(),
                    seen.last()
                );
            }
            let message = self
                .recv_json(left)
                .await
                .with_context(|| format!("after {} messages", seen.len()))?;
            let done = predicate(&message);
            seen.push(message);
            if done {
                return Ok(seen);
            }
        }
    }

    /// Waits for the close frame (other messages are skipped).
    pub async fn closed(&mut self, timeout: Duration) -> Result<Closed> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => bail!("not closed within {timeout:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Ok(Closed::WithoutFrame),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Ok(Closed::Frame {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    });
                }
                Ok(Some(Ok(Message::Close(None)))) => return Ok(Closed::WithoutFrame),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Subscribes and returns the `subscriptionId` of the ack.
    pub async fn subscribe(&mut self, request: Value) -> Result<String> {
        self.send_json(request).await?;
        let ack = self.recv_json(Duration::from_secs(5)).await?;
        if ack["type"] != "subscribed" {
            bail!("expected subscribed, got {ack}");
        }
        Ok(ack["subscriptionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

pub async fn get_json(url: &str) -> Result<Value> {
    Ok(reqwest::get(url).await?.json().await?)
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `host` is connected in `/api/hosts`.
/// The relay's `/metrics` text.
pub async fn metrics_text(relay: &Relay) -> Result<String> {
    Ok(reqwest::get(relay.url("/metrics")).await?.text().await?)
}

/// The value of the sample line `name` in the relay's `/metrics`.
pub async fn metric_value(relay: &Relay, name: &str) -> Result<f64> {
    metric_value_with(relay, name, None).await
}

/// [`metric_value`] with a bearer token (relays with `browsers = "token"`).
pub async fn metric_value_with(relay: &Relay, name: &str, token: Option<&str>) -> Result<f64> {
    let (_, text) = get_with(&relay.url("/metrics"), token).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{name} not in /metrics"))
}

pub async fn wait_for_host(relay: &Relay, host: &str) -> Result<Value> {
    let url = relay.url("/api/hosts");
    eventually(Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let hosts = get_json(&url).await.ok()?;
            hosts["hosts"]
                .as_array()?
                .iter()
                .find(|h| h["host"] == host && h["connected"] == true)
                .cloned()
        }
    })
    .await
}

/// Appends numbered lines `from..to` (`line 000001 ...`) to `path`.
pub fn append_numbered(path: &Path, from: u64, to: u64) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut text = String::new();
    for n in from..to {
        text.push_str(&format!("line {n:08} {}\n", "x".repeat(60)));
    }
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The line number in a `line 00000042 ...` message.
pub fn line_number(message: &Value) -> Option<u64> {
    message["message"]
        .as_str()?
        .strip_prefix("line ")?
        .get(..8)?
        .parse()
        .ok()
}

/// A simulated agent speaking the real uplink protocol over QUIC, to feed
/// the relay exact items.
pub struct SimAgent {
    pub endpoint: quinn::Endpoint,
    pub session: o1_agent::uplink::Session,
    pub next_sequence: u64,
}

impl std::fmt::Debug for SimAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAgent")
            .field("next_sequence", &self.next_sequence)
            .finish()
    }
}

pub fn sim_settings(
    relay: &Relay,
    pki: &Pki,
    host: &str,
    token: &str,
) -> o1_agent::uplink::UplinkSettings {
    o1_agent::uplink::UplinkSettings {
        addresses: vec![relay.uplink.to_string()],
        ack_timeout: Duration::from_secs(2),
        server_name: Some("localhost".into()),
        ca: Some(pki.ca()),
        insecure_skip_verify: false,
        token: token.to_owned(),
        client_cert: None,
        host: host.to_owned(),
        agent_id: format!("sim-{host}"),
        applications: vec!["app".into()],
        idle_timeout: Duration::from_secs(5),
        max_frame: o1_common::wire::DEFAULT_MAX_FRAME,
    }
}

impl SimAgent {
    pub async fn connect(relay: &Relay, pki: &Pki, host: &str) -> Result<SimAgent> {
        let settings = sim_settings(relay, pki, host, &pki.token);
        let endpoint = o1_agent::uplink::endpoint(&settings)?;
        let session =
            o1_agent::uplink::connect(&endpoint, &settings, &settings.addresses[0]).await?;
        Ok(SimAgent {
            endpoint,
            session,
            next_sequence: 1,
        })
    }

    /// Sends one batch and waits for its ack.
    pub async fn send(&mut self, items: Vec<o1_common::wire::Item>) -> Result<u64> {
        let sequence = self.next_sequence;
        self.send_with_sequence(sequence, items).await?;
        self.next_sequence += 1;
        Ok(sequence)
    }

    pub async fn send_with_sequence(
        &mut self,
        sequence: u64,
        items: Vec<o1_common::wire::Item>,
    ) -> Result<()> {
        let frame =
            o1_common::wire::encode_batch(sequence, items, 0, o1_common::wire::DEFAULT_MAX_FRAME)?;
        self.session.send_frame(&frame).await?;
        let acked =
            tokio::time::timeout(Duration::from_secs(10), self.session.next_ack()).await??;
        if acked < sequence {
            bail!("ack {acked} below {sequence}");
        }
        Ok(())
    }
}

pub fn log_item(
    application: &str,
    level: o1_common::Level,
    message: &str,
) -> o1_common::wire::Item {
    o1_common::wire::Item::Log(o1_common::wire::LogRecord {
        application: application.to_owned(),
        timestamp_ms: o1_common::Timestamp::now().unix_millis,
        level,
        message: message.to_owned(),
        deployment_id: None,
    })
}

pub fn metric_item(application: &str, cpu: f64) -> o1_common::wire::Item {
    o1_common::wire::Item::Metric(o1_common::wire::MetricSample {
        application: application.to_owned(),
        timestamp_ms: o1_common::Timestamp::now().unix_millis,
        up: true,
        cpu_percent: cpu,
        memory_percent: 50.0,
        memory_bytes: 1 << 30,
        disk_percent: Some(25.5),
        disk_bytes: Some(1 << 33),
        network: Some((1000.0, 2000.0)),
    })
}

/// One entry for [`journal_append`].
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub unit: Option<String>,
    pub identifier: Option<String>,
    pub priority: u8,
    /// Any bytes: a message with a newline or invalid UTF-8 is written in
    /// the binary form of the export format.
    pub message: Vec<u8>,
    /// `__REALTIME_TIMESTAMP`, microseconds since the epoch.
    pub realtime_us: u64,
}

impl JournalEntry {
    pub fn unit(unit: &str, priority: u8, message: &str, realtime_us: u64) -> JournalEntry {
        JournalEntry {
            unit: Some(unit.to_owned()),
            identifier: None,
            priority,
            message: message.as_bytes().to_vec(),
            realtime_us,
        }
    }
}

/// The program that writes journal files from the Journal Export Format
/// (Debian package `systemd-journal-remote`): real journal files without a
/// running journald.
pub fn journal_remote() -> Result<PathBuf> {
    [
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .context("systemd-journal-remote is not installed (apt-get install systemd-journal-remote)")
}

/// Appends `entries` to the journal file `dir/remote.journal` through
/// systemd-journal-remote.
pub fn journal_append(dir: &Path, entries: &[JournalEntry]) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut export = Vec::new();
    let field = |export: &mut Vec<u8>, name: &str, value: &[u8]| {
        if value.contains(&b'\n') || std::str::from_utf8(value).is_err() {
            export.extend_from_slice(name.as_bytes());
            export.push(b'\n');
            export.extend_from_slice(&(value.len() as u64).to_le_bytes());
            export.extend_from_slice(value);
            export.push(b'\n');
        } else {
            export.extend_from_slice(format!("{name}=").as_bytes());
            export.extend_from_slice(value);
            export.push(b'\n');
        }
    };
    for entry in entries {
        field(
            &mut export,
            "__REALTIME_TIMESTAMP",
            entry.realtime_us.to_string().as_bytes(),
        );
        field(
            &mut export,
            "__MONOTONIC_TIMESTAMP",
            entry.realtime_us.to_string().as_bytes(),
        );
        field(&mut export, "_BOOT_ID", b"0123456789abcdef0123456789abcdef");
        field(&mut export, "MESSAGE", &entry.message);
        field(
            &mut export,
            "PRIORITY",
            entry.priority.to_string().as_bytes(),
        );
        if let Some(unit) = &entry.unit {
            field(&mut export, "_SYSTEMD_UNIT", unit.as_bytes());
        }
        if let Some(identifier) = &entry.identifier {
            field(&mut export, "SYSLOG_IDENTIFIER", identifier.as_bytes());
        }
        export.push(b'\n');
    }
    let mut child = Command::new(journal_remote()?)
        .arg(format!("--output={}", dir.join("remote.journal").display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(&export)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "systemd-journal-remote failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A credential made by `o1-relay token create`.
#[derive(Debug, Clone)]
pub struct Token {
    pub token: String,
    /// The `[[auth.token]]` table for relay.toml.
    pub toml: String,
}

impl Token {
    pub fn create(role: &str, hosts: &[&str], name: &str) -> Result<Token> {
        let mut command = Command::new(binary("o1-relay"));
        command.args(["token", "create", "--role", role, "--name", name]);
        for host in hosts {
            command.args(["--hosts", host]);
        }
        let output = command.output()?;
        if !output.status.success() {
            bail!(
                "o1-relay token create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = String::from_utf8(output.stdout)?;
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("token: "))
            .context("no token line")?
            .to_owned();
        let toml = text
            .split_once("# relay.toml\n")
            .map(|(_, rest)| rest.to_owned())
            .context("no relay.toml lines")?;
        Ok(Token { token, toml })
    }
}

/// A GET with an optional bearer token: the status and the body text.
pub async fn get_with(url: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// A POST of a JSON body with an optional bearer token: status and body.
pub async fn post_with(url: &str, token: Option<&str>, body: Value) -> Result<(u16, Value)> {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

impl WsClient {
    /// Connects with extra request headers (`Origin`, `Authorization`).
    /// `Err` carries the HTTP status when the upgrade was refused.
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<WsClient, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().map_err(|_| 0u16)?;
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| 0u16)?;
            request
                .headers_mut()
                .insert(name, value.parse().map_err(|_| 0u16)?);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(_) => Err(0),
        }
    }

    /// Sends `authenticate` and returns the answer.
    pub async fn authenticate(&mut self, token: &str) -> Result<Value> {
        self.send_json(
            serde_json::json!({"type": "authenticate", "token": token, "requestId": "auth"}),
        )
        .await?;
        self.recv_json(Duration::from_secs(5)).await
    }
}

impl SimAgent {
    /// Connects with these settings (another token, a client certificate).
    pub async fn connect_settings(
        settings: &o1_agent::uplink::UplinkSettings,
    ) -> std::result::Result<SimAgent, o1_agent::uplink::UplinkError> {
        let endpoint = o1_agent::uplink::endpoint(settings)?;
        let session =
            o1_agent::uplink::connect(&endpoint, settings, &settings.addresses[0]).await?;
        Ok(SimAgent {
            endpoint,
            session,
            next_sequence: 1,
        })
    }
}

/// A real `nats-server -js` (Debian's `nats-server`) on a free loopback
/// port, its JetStream store in `dir`.
#[derive(Debug)]
pub struct Nats {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Nats {
    pub fn start(dir: &Path) -> Result<Nats> {
        std::fs::create_dir_all(dir)?;
        Self::spawn(dir, None)
    }

    fn spawn(dir: &Path, port: Option<u16>) -> Result<Nats> {
        let ports = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports)?;
        let log = std::fs::File::create(dir.join(format!("nats-{}.log", unique())))?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(port.map_or("-1".to_owned(), |p| p.to_string()))
            .arg("-sd")
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("nats-server (apt-get install nats-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            let found = std::fs::read_dir(&ports)?
                .flatten()
                .find_map(|e| std::fs::read_to_string(e.path()).ok())
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .and_then(|v| {
                    v["nats"][0]
                        .as_str()?
                        .rsplit(':')
                        .next()?
                        .parse::<u16>()
                        .ok()
                });
            if let Some(port) = found {
                break port;
            }
            if Instant::now() > deadline {
                bail!("nats-server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Nats {
            child,
            port,
            dir: dir.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The `[cluster]` section for a relay named `name`.
    pub fn relay_config(&self, name: &str) -> String {
        format!(
            "[cluster]\nnats_url = \"{}\"\nname = \"{name}\"\nheartbeat_secs = 1\npublish_timeout_ms = 2000\n",
            self.url()
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let (dir, port) = (self.dir.clone(), self.port);
        respawn(self, || Self::spawn(&dir, Some(port)))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the relay's health is `healthy` (a clustered relay: joined
/// and caught up).
pub async fn wait_healthy(relay: &Relay) -> Result<()> {
    let url = relay.url("/api/websocket/health");
    eventually(Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let health = get_json(&url).await.ok()?;
            (health["status"] == "healthy").then_some(())
        }
    })
    .await
}
