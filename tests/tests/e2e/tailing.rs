//! Log tailing and the spool: every line, once, in order, through
//! rotation, restarts and outages (issue: log tailing and spool).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use o1_tests::{Agent, Pki, Relay, WsClient, get_json, line_number, wait_for_host};
use serde_json::json;

pub(crate) const T: Duration = Duration::from_secs(20);
const HISTORY: &str = "[history]\nlines_per_source = 20000\nbytes_per_source = 67108864\n";

pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) pki: Pki,
    pub(crate) relay: Relay,
    pub(crate) log_dir: PathBuf,
}

impl Setup {
    /// Starts an agent for `tail-host` with `config` in `agent/`, waits
    /// until the relay lists it, and subscribes to its logs: the start of
    /// most tests of the file edges. Returns the agent, its directory and
    /// the subscriber.
    pub(crate) async fn agent_and_subscriber(&self, config: &str) -> (Agent, PathBuf, WsClient) {
        let agent = self.agent(config).await;
        let client = subscribe(&self.relay).await;
        (agent, self.dir.path().join("agent"), client)
    }

    /// Starts an agent for `tail-host` with `config` in `agent/` and waits
    /// until the relay lists it.
    pub(crate) async fn agent(&self, config: &str) -> Agent {
        let dir = self.dir.path().join("agent");
        Agent::start_listed(&dir, &self.pki, &self.relay, "tail-host", config)
            .await
            .unwrap()
    }

    /// A new relay on the ports of the one that was killed.
    fn relay_back(&self, http: std::net::SocketAddr, uplink: std::net::SocketAddr) -> Relay {
        tokio::task::block_in_place(|| {
            Relay::start_on(
                &self.dir.path().join("relay2"),
                &self.pki,
                HISTORY,
                &http.to_string(),
                &uplink.to_string(),
            )
        })
        .unwrap()
    }
}

pub(crate) fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, HISTORY).unwrap();
    let log_dir = dir.path().join("logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    Setup {
        dir,
        pki,
        relay,
        log_dir,
    }
}

pub(crate) fn agent_config(pattern: &Path, extra: &str) -> String {
    format!(
        "[metrics]\nenabled = false\n\n[logs]\nstart_at = \"beginning\"\nrescan_interval_ms = 500\n\n[[application]]\nname = \"app\"\nlogs = [\"{}\"]\n\n{extra}",
        pattern.display()
    )
}

pub(crate) fn numbered(n: u64) -> String {
    format!("line {n:08} {}\n", "x".repeat(60))
}

/// Collects line numbers until `last` arrives; fails on timeout.
pub(crate) async fn collect_until(client: &mut WsClient, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let message = client
            .recv_json(T)
            .await
            .unwrap_or_else(|e| panic!("after {} lines ({:?}): {e}", seen.len(), seen.last()));
        if let Some(n) = line_number(&message) {
            seen.push(n);
            if n == last {
                return seen;
            }
        }
    }
}

pub(crate) fn assert_exactly(seen: &[u64], total: u64) {
    let expected: Vec<u64> = (0..total).collect();
    if seen != expected {
        let mut sorted = seen.to_vec();
        sorted.sort_unstable();
        let duplicates = sorted.windows(2).filter(|w| w[0] == w[1]).count();
        let missing = expected
            .iter()
            .filter(|n| sorted.binary_search(n).is_err())
            .count();
        let first = seen
            .iter()
            .zip(expected.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(seen.len().min(expected.len()));
        let around = &seen[first.saturating_sub(3)..(first + 5).min(seen.len())];
        panic!(
            "expected 0..{total} once each in order: {} lines, {duplicates} repeated, {missing} missing; first difference at index {first}: {around:?}",
            seen.len()
        );
    }
}

pub(crate) async fn subscribe(relay: &Relay) -> WsClient {
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs", "host": "tail-host", "tail": 20000}))
        .await
        .unwrap();
    client
}

#[derive(Debug, Clone, Copy)]
enum Rotation {
    RenameCreate,
    RenameNoCreate,
    CopyTruncate,
    DeleteRecreate,
}

/// Writes `total` numbered lines to `path` like an application that keeps
/// its file open, rotating once at `total / 2`.
fn write_with_rotation(path: &Path, total: u64, rotation: Rotation) {
    let open = |path: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    };
    let mut file = open(path);
    let rotated = path.with_extension("log.1");
    for n in 0..total {
        if n == total / 2 {
            match rotation {
                Rotation::RenameCreate | Rotation::RenameNoCreate => {
                    std::fs::rename(path, &rotated).unwrap();
                    if matches!(rotation, Rotation::RenameCreate) {
                        File::create(path).unwrap();
                    }
                    // The application keeps writing to the renamed file
                    // until it reopens its log.
                    for k in 0..50 {
                        file.write_all(numbered(n + k).as_bytes()).unwrap();
                    }
                    file = open(path);
                    for k in 50..100 {
                        file.write_all(numbered(n + k).as_bytes()).unwrap();
                    }
                }
                Rotation::CopyTruncate => {
                    std::fs::copy(path, &rotated).unwrap();
                    OpenOptions::new()
                        .write(true)
                        .open(path)
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                    for k in 0..100 {
                        file.write_all(numbered(n + k).as_bytes()).unwrap();
                    }
                }
                Rotation::DeleteRecreate => {
                    std::fs::remove_file(path).unwrap();
                    file = open(path);
                    for k in 0..100 {
                        file.write_all(numbered(n + k).as_bytes()).unwrap();
                    }
                }
            }
            continue;
        }
        if n > total / 2 && n < total / 2 + 100 {
            continue;
        }
        file.write_all(numbered(n).as_bytes()).unwrap();
        if n % 20 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

async fn rotation_case(rotation: Rotation) {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let (_agent, _, mut client) = s.agent_and_subscriber(&agent_config(&log, "")).await;
    let total = 4000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || write_with_rotation(&log, total, rotation))
    };
    let seen = collect_until(&mut client, total - 1).await;
    writer.join().unwrap();
    assert_exactly(&seen, total);
    // Nothing more arrives (no late repeats).
    assert!(
        client.recv_json(Duration::from_millis(1500)).await.is_err(),
        "{rotation:?}: extra lines after the last"
    );
}

#[tokio::test]
async fn rename_rotation_with_create_loses_and_repeats_nothing() {
    rotation_case(Rotation::RenameCreate).await;
}

#[tokio::test]
async fn rename_rotation_without_create_loses_and_repeats_nothing() {
    rotation_case(Rotation::RenameNoCreate).await;
}

#[tokio::test]
async fn copytruncate_loses_and_repeats_nothing() {
    rotation_case(Rotation::CopyTruncate).await;
}

#[tokio::test]
async fn delete_and_recreate_loses_and_repeats_nothing() {
    rotation_case(Rotation::DeleteRecreate).await;
}

#[tokio::test]
async fn a_deleted_file_is_not_held_open_forever() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, numbered(0)).unwrap();
    let (agent, _, mut client) = s.agent_and_subscriber(&agent_config(&log, "")).await;
    collect_until(&mut client, 0).await;
    std::fs::remove_file(&log).unwrap();
    let fds = format!("/proc/{}/fd", agent.pid());
    let holds_deleted = || {
        std::fs::read_dir(&fds)
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target.to_string_lossy().contains("app.log (deleted)"))
    };
    assert!(holds_deleted(), "still read right after deletion");
    o1_tests::eventually(Duration::from_secs(15), || async {
        (!holds_deleted()).then_some(())
    })
    .await
    .expect("released after it stayed quiet");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_kill_9_mid_stream_then_restart_loses_and_repeats_nothing() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let (mut agent, _, mut client) = s.agent_and_subscriber(&agent_config(&log, "")).await;
    let total = 6000u64;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(&log).unwrap();
            for n in 0..total {
                file.write_all(numbered(n).as_bytes()).unwrap();
                if n % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tokio::task::block_in_place(|| agent.kill_and_restart()).unwrap();
    }
    let seen = collect_until(&mut client, total - 1).await;
    writer.join().unwrap();
    assert_exactly(&seen, total);
    assert!(
        client.recv_json(Duration::from_millis(1500)).await.is_err(),
        "extra lines after the last"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_down_30_seconds_while_lines_are_written_then_back() {
    let mut s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let (_agent, _, mut before) = s.agent_and_subscriber(&agent_config(&log, "")).await;
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    for n in 0..500 {
        file.write_all(numbered(n).as_bytes()).unwrap();
    }
    let mut seen = collect_until(&mut before, 499).await;
    // Down: kill it; keep the config (ports) to bring it back.
    let http = s.relay.http;
    let uplink = s.relay.uplink;
    s.relay.kill();
    let total = 3500u64;
    for n in 500..total {
        file.write_all(numbered(n).as_bytes()).unwrap();
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let relay = s.relay_back(http, uplink);
    wait_for_host(&relay, "tail-host").await.unwrap();
    let mut after = subscribe(&relay).await;
    let rest = collect_until(&mut after, total - 1).await;
    seen.extend(rest);
    assert_exactly(&seen, total);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_drops_the_oldest_and_reports_how_many() {
    let mut s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let spool = "[spool]\nmax_bytes = 131072\nsegment_bytes = 65536\n\n[batch]\nmax_items = 50\n";
    let agent = s.agent(&agent_config(&log, spool)).await;
    let (http, uplink) = (s.relay.http, s.relay.uplink);
    s.relay.kill();
    let total = 10_000u64;
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    for n in 0..total {
        file.write_all(numbered(n).as_bytes()).unwrap();
    }
    drop(file);
    // Let the agent read it all into its (too small) spool.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let relay = s.relay_back(http, uplink);
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs", "host": "tail-host", "tail": 20000}))
        .await
        .unwrap();
    let seen = collect_until(&mut client, total - 1).await;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    let reported = o1_tests::eventually(T, || async {
        let value = o1_tests::metric_value(&relay, "o1_agent_spool_dropped_items_total")
            .await
            .ok()?;
        (value > 0.0).then_some(value as u64)
    })
    .await
    .unwrap();
    assert!(seen.len() < total as usize, "some lines had to be dropped");
    assert_eq!(
        seen.len() as u64 + reported,
        total,
        "every dropped line is reported"
    );
    assert!(agent.log().contains("spool full"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_spool_file_is_cut_and_nothing_is_lost() {
    let mut s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let agent_dir = s.dir.path().join("agent");
    let mut agent = Agent::start_listed(
        &agent_dir,
        &s.pki,
        &s.relay,
        "tail-host",
        &agent_config(&log, ""),
    )
    .await
    .unwrap();
    let (http, uplink) = (s.relay.http, s.relay.uplink);
    s.relay.kill();
    let total = 2000u64;
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    for n in 0..total {
        file.write_all(numbered(n).as_bytes()).unwrap();
        if n % 100 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.kill();
    // Tear the end of the newest spool segment, as a crash mid-write would.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(agent_dir.join("state/spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.last().expect("a spool segment");
    let len = std::fs::metadata(last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let relay = s.relay_back(http, uplink);
    let agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs", "host": "tail-host", "tail": 20000}))
        .await
        .unwrap();
    let seen = collect_until(&mut client, total - 1).await;
    assert_exactly(&seen, total);
    assert!(
        agent.log().contains("torn"),
        "the cut is reported: {}",
        agent.log()
    );
}

#[tokio::test]
async fn a_thousand_files_watched_at_once() {
    let s = setup();
    for i in 0..1000u64 {
        std::fs::write(s.log_dir.join(format!("f{i:04}.log")), "").unwrap();
    }
    let pattern = s.log_dir.join("*.log");
    let (_agent, _, mut client) = s.agent_and_subscriber(&agent_config(&pattern, "")).await;
    // Give the agent its first scan of all 1000 files.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..1000u64 {
        let mut file = OpenOptions::new()
            .append(true)
            .open(s.log_dir.join(format!("f{i:04}.log")))
            .unwrap();
        file.write_all(numbered(i).as_bytes()).unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        let message = client
            .recv_json(T)
            .await
            .unwrap_or_else(|e| panic!("after {} lines: {e}", seen.len()));
        seen.push(line_number(&message).unwrap());
    }
    seen.sort_unstable();
    assert_exactly(&seen, 1000);
    let stats = get_json(&s.relay.url("/api/websocket/stats"))
        .await
        .unwrap();
    assert!(stats["batcherStats"]["messagesProcessed"].as_u64().unwrap() >= 1000);
}

#[tokio::test]
async fn partial_long_binary_and_unreadable_lines_are_not_fatal() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    let unreadable = s.log_dir.join("secret.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(&unreadable, "line 99999999 never\n").unwrap();
    // Root reads anything, so make it unreadable by being a directory-like
    // dangling symlink target instead: a symlink to nowhere.
    std::fs::remove_file(&unreadable).unwrap();
    std::os::unix::fs::symlink(s.log_dir.join("missing-target"), &unreadable).unwrap();
    let pattern = s.log_dir.join("*.log");
    let config = agent_config(&pattern, "").replace(
        "[logs]\n",
        "[logs]\nmax_line_bytes = 100\npartial_line_timeout_ms = 500\n",
    );
    let (agent, _, mut client) = s.agent_and_subscriber(&config).await;
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(b"line 00000000 ERROR bad byte \xff here\n")
        .unwrap();
    file.write_all(format!("line 00000001 {}\n", "y".repeat(500)).as_bytes())
        .unwrap();
    file.write_all(b"line 00000002 after the long one\n")
        .unwrap();
    file.write_all(b"line 00000003 no newline yet").unwrap();
    file.flush().unwrap();
    let seen = client
        .recv_until(T, |m| line_number(m) == Some(3))
        .await
        .unwrap();
    let lines: Vec<&serde_json::Value> = seen.iter().filter(|m| m["type"] == "log").collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0]["message"].as_str().unwrap().contains('\u{fffd}'));
    assert_eq!(lines[0]["level"], "ERROR");
    let long = lines[1]["message"].as_str().unwrap();
    assert!(long.ends_with("…[truncated]") && long.len() < 150, "{long}");
    assert_eq!(lines[2]["message"], "line 00000002 after the long one");
    assert_eq!(lines[3]["message"], "line 00000003 no newline yet");
    // The agent is alive and still reading.
    file.write_all(b"\nline 00000004 more\n").unwrap();
    let next = client
        .recv_until(T, |m| line_number(m) == Some(4))
        .await
        .unwrap();
    assert!(!next.is_empty());
    assert!(!agent.log().contains("panicked"));
    let log = agent.log();
    assert!(
        log.contains("cannot read log file") && log.contains("secret.log"),
        "the unreadable file is reported: {log}"
    );
}

#[tokio::test]
async fn polling_mode_follows_rename_rotation() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let config = agent_config(&log, "").replace(
        "[logs]\n",
        "[logs]\nwatch = \"poll\"\npoll_interval_ms = 100\n",
    );
    let (_agent, _, mut client) = s.agent_and_subscriber(&config).await;
    let total = 2000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || write_with_rotation(&log, total, Rotation::RenameCreate))
    };
    let seen = collect_until(&mut client, total - 1).await;
    writer.join().unwrap();
    assert_exactly(&seen, total);
}

#[tokio::test]
async fn indented_lines_join_the_record_before_them() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let config = agent_config(&log, "")
        .replace("logs = [", "multiline = \"indented\"\nlogs = [")
        .replace("[logs]\n", "[logs]\npartial_line_timeout_ms = 300\n");
    let (_agent, _, mut client) = s.agent_and_subscriber(&config).await;
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(b"line 00000000 ERROR boom\n    at a()\n\tat b()\nline 00000001 next\n")
        .unwrap();
    let first = client.recv_json(T).await.unwrap();
    assert_eq!(
        first["message"],
        "line 00000000 ERROR boom\n    at a()\n\tat b()"
    );
    assert_eq!(first["level"], "ERROR");
    // The last record is sent once nothing continues it for a moment.
    let second = client.recv_json(T).await.unwrap();
    assert_eq!(second["message"], "line 00000001 next");
}

/// 30,000 bytes of 0xFF on one line, with the default `max_line_bytes`:
/// lossy conversion makes them three times longer as text. The line is
/// cut on a character boundary and marked, and the agent keeps tailing
/// (this once panicked the tailer thread while the agent ran on).
#[tokio::test(flavor = "multi_thread")]
async fn thirty_thousand_invalid_bytes_are_cut_and_tailing_goes_on() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let (_agent, _, mut client) = s.agent_and_subscriber(&agent_config(&log, "")).await;
    let mut line = b"line 00000000 ".to_vec();
    line.extend(std::iter::repeat_n(0xff, 30_000));
    line.push(b'\n');
    line.extend_from_slice(b"line 00000001 after the invalid one\n");
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(&line).unwrap();
    let seen = client
        .recv_until(T, |m| line_number(m) == Some(1))
        .await
        .unwrap();
    let lines: Vec<&str> = seen
        .iter()
        .filter(|m| m["type"] == "log")
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert!(lines[0].starts_with("line 00000000 \u{fffd}"));
    assert!(lines[0].ends_with("…[truncated]"));
    assert_eq!(lines[1], "line 00000001 after the invalid one");
    // Still tailing.
    file.write_all(b"line 00000002 still here\n").unwrap();
    client
        .recv_until(T, |m| line_number(m) == Some(2))
        .await
        .unwrap();
}
