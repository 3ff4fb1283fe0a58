//! Durable history and resume with offsets: a subscriber that comes back
//! with `since` gets exactly what it missed, across a dropped socket and
//! across a relay killed with SIGKILL in the middle of a burst; offsets
//! only grow, the epoch changes only when the history is wiped, and a
//! `since` older than what is held is announced with `gap`.

use std::time::{Duration, Instant};

use o1_common::Level;
use o1_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// Subscribes; returns the ack (with `epoch`).
async fn subscribe(ws: &mut WsClient, request: Value) -> Value {
    ws.send_json(request).await.unwrap();
    let ack = ws.recv_json(T).await.unwrap();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ack
}

fn numbered(message: &Value) -> Option<(u64, u64)> {
    Some((line_number(message)?, message["offset"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_reconnects_with_since_gets_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "web-01").await.unwrap();
    let line = |n: u64| log_item("app", Level::Info, &format!("line {n:08} payload"));
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let ack = subscribe(&mut ws, json!({"type": "subscribe-logs", "host": "web-01"})).await;
    let epoch = ack["epoch"].as_u64().expect("subscribed carries epoch");
    // Another host's lines interleave: offsets are relay-wide.
    let mut other = SimAgent::connect(&relay, &pki, "db-01").await.unwrap();
    for n in 0..100 {
        agent.send(vec![line(n)]).await.unwrap();
        other.send(vec![line(n)]).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 60 {
        seen.push(numbered(&ws.recv_json(T).await.unwrap()).unwrap());
    }
    // The socket drops; lines go on meanwhile.
    drop(ws);
    for n in 100..300 {
        agent.send(vec![line(n)]).await.unwrap();
        other.send(vec![line(n)]).await.unwrap();
    }
    let (last, offset) = *seen.last().unwrap();
    assert_eq!(last, 59);
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut ws,
        json!({"type": "subscribe-logs", "host": "web-01", "since": {"offset": offset, "epoch": epoch}}),
    )
    .await;
    agent.send(vec![line(300)]).await.unwrap();
    let mut resumed = Vec::new();
    while resumed.last().map(|(n, _)| *n) != Some(300) {
        let message = ws.recv_json(T).await.unwrap();
        assert_ne!(message["type"], "gap", "nothing was lost: {message}");
        resumed.push(numbered(&message).unwrap());
    }
    let numbers: Vec<u64> = resumed.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (60..=300).collect::<Vec<_>>(),
        "exactly the missed lines, then live"
    );
    assert!(resumed.windows(2).all(|w| w[1].1 > w[0].1), "offsets grow");
}

/// A relay with its agent tailing `app.log`, and a subscriber that follows
/// `web-01` and resumes with `since` whenever its socket drops.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_killed_during_a_100000_line_burst_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[websocket]\nqueue_messages = 100000\nqueue_bytes = 67108864\n",
    )
    .unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let _agent = Agent::start_listed(
        &dir.path().join("agent"),
        &pki,
        &relay,
        "web-01",
        &format!(
            "[[application]]\nname = \"app\"\nlogs = [\"{}\"]\n",
            log.display()
        ),
    )
    .await
    .unwrap();
    let total = 100_000u64;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while n < total {
                append_numbered(&log, n, (n + 500).min(total)).unwrap();
                n += 500;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let ack = subscribe(&mut ws, json!({"type": "subscribe-logs", "host": "web-01"})).await;
    let epoch = ack["epoch"].as_u64().unwrap();
    let mut seen: Vec<u64> = Vec::new();
    let mut last_offset = None;
    let mut killed = false;
    let mut resumes = 0;
    while seen.last() != Some(&(total - 1)) {
        if !killed && seen.len() >= 30_000 {
            killed = true;
            tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();
        }
        match ws.recv_json(Duration::from_secs(5)).await {
            Ok(message) => {
                assert_ne!(message["type"], "gap", "{message}");
                assert_ne!(message["type"], "dropped", "{message}");
                if let Some((n, offset)) = numbered(&message) {
                    seen.push(n);
                    last_offset = Some(offset);
                }
            }
            Err(_) => {
                // The socket died with the relay: resume where it stopped.
                resumes += 1;
                assert!(resumes < 20, "cannot resume; saw {}", seen.len());
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Ok(mut fresh) = WsClient::connect(&relay.ws_url()).await else {
                    continue;
                };
                let since = last_offset.unwrap_or(0);
                let ack = subscribe(
                    &mut fresh,
                    json!({"type": "subscribe-logs", "host": "web-01",
                           "since": {"offset": since, "epoch": epoch}}),
                )
                .await;
                assert_eq!(ack["epoch"].as_u64(), Some(epoch), "the history survived");
                ws = fresh;
            }
        }
    }
    writer.join().unwrap();
    assert!(killed && resumes >= 1);
    assert_eq!(seen.len() as u64, total, "every line exactly once");
    assert!(
        seen.iter().enumerate().all(|(i, n)| *n == i as u64),
        "in order, no repeat, no gap"
    );
}

/// A subscriber of lines holding `text`, and the epoch it was told.
async fn searching(relay: &Relay, text: &str) -> (WsClient, u64) {
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let ack = subscribe(&mut ws, json!({"type": "subscribe-logs", "search": text})).await;
    (ws, ack["epoch"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_grow_across_restarts_and_the_epoch_changes_only_when_history_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let history = dir.path().join("relay/history");
    let (mut ws, epoch) = searching(&relay, "one").await;
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    agent
        .send(vec![log_item("app", Level::Info, "one")])
        .await
        .unwrap();
    let before = ws.recv_json(T).await.unwrap()["offset"].as_u64().unwrap();
    drop(agent);
    // SIGKILL and restart: same epoch, offsets go on, and `tail` still has
    // the line (history is rebuilt from disk).
    tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();
    let (mut ws, same) = searching(&relay, "two").await;
    assert_eq!(same, epoch);
    // A new agent id: an agent's sequence numbers go on across restarts,
    // a simulated one's start again at 1 and would be taken for resends.
    let mut settings = sim_settings(&relay, &pki, "h", &pki.token);
    settings.agent_id = "sim-h-2".into();
    let mut agent = SimAgent::connect_settings(&settings).await.unwrap();
    agent
        .send(vec![log_item("app", Level::Info, "two")])
        .await
        .unwrap();
    let after = ws.recv_json(T).await.unwrap()["offset"].as_u64().unwrap();
    assert!(after > before, "{after} after {before}");
    let mut tail = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(&mut tail, json!({"type": "subscribe-logs", "tail": 10})).await;
    let replayed = tail.recv_json(T).await.unwrap();
    assert_eq!(replayed["message"], "one", "{replayed}");
    assert_eq!(replayed["offset"].as_u64(), Some(before));
    drop(agent);
    // Wiped: a new epoch.
    relay.kill();
    std::fs::remove_dir_all(&history).unwrap();
    tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();
    let (_ws, fresh) = searching(&relay, "three").await;
    assert_ne!(fresh, epoch);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_since_older_than_the_history_held_is_announced_with_gap() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[history]\nsegment_bytes = 4096\ndisk_bytes = 16384\n",
    )
    .unwrap();
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let epoch = subscribe(&mut ws, json!({"type": "subscribe-logs"})).await["epoch"]
        .as_u64()
        .unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    for n in 0..400 {
        agent
            .send(vec![log_item(
                "app",
                Level::Info,
                &format!("line {n:08} {}", "x".repeat(100)),
            )])
            .await
            .unwrap();
    }
    let mut resumed = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut resumed,
        json!({"type": "subscribe-logs", "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    let gap = resumed.recv_json(T).await.unwrap();
    assert_eq!(gap["type"], "gap", "{gap}");
    assert!(gap["subscriptionId"].is_string());
    // Then what is held, in order, up to the newest line.
    let lines = resumed
        .recv_until(T, |m| {
            m["message"]
                .as_str()
                .is_some_and(|t| t.starts_with("line 00000399"))
        })
        .await
        .unwrap();
    let numbers: Vec<u64> = lines.iter().filter_map(line_number).collect();
    assert!(
        numbers.len() < 400 && numbers.len() > 10,
        "{}",
        numbers.len()
    );
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
    // Another epoch: a gap too.
    let mut other = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut other,
        json!({"type": "subscribe-logs", "since": {"offset": 5, "epoch": epoch + 1}}),
    )
    .await;
    assert_eq!(other.recv_json(T).await.unwrap()["type"], "gap");
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_and_chart_history_survive_a_restart_and_deployments_resume() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let (status, body) = post_with(
        &relay.url("/api/deployments"),
        Some(&pki.token),
        json!({"deploymentId": "d1", "application": "app", "hosts": ["h"]}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let epoch =
        subscribe(&mut ws, json!({"type": "subscribe", "deploymentId": "d1"})).await["epoch"]
            .as_u64()
            .unwrap();
    let state = ws.recv_json(T).await.unwrap();
    let seen_offset = state["offset"].as_u64().unwrap();
    let event = json!({"progress": 40, "message": "half", "logs": [{"message": "step one"}]});
    let (status, _) = post_with(
        &relay.url("/api/deployments/d1/events"),
        Some(&pki.token),
        event,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    // Metric samples of the last minutes (as an agent that was up).
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    let now = o1_common::Timestamp::now().unix_millis;
    let samples: Vec<o1_common::wire::Item> = (0..12)
        .rev()
        .map(|k| {
            let mut item = metric_item("app", 10.0 + k as f64);
            if let o1_common::wire::Item::Metric(sample) = &mut item {
                sample.timestamp_ms = now - k * 5_000;
            }
            item
        })
        .collect();
    agent.send(samples).await.unwrap();
    drop(agent);
    tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();

    // The deployment is back as it was.
    let (status, body) = get_with(&relay.url("/api/deployments/d1"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (view["status"].as_str(), view["progress"].as_u64()),
        (Some("running"), Some(40))
    );
    // Resuming it: only what changed after what the client saw.
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "deploymentId": "d1", "since": {"offset": seen_offset, "epoch": epoch}}),
    )
    .await;
    let first = ws.recv_json(T).await.unwrap();
    assert_eq!(
        (first["type"].as_str(), first["progress"].as_u64()),
        (Some("deployment"), Some(40)),
        "{first}"
    );
    let line = ws.recv_json(T).await.unwrap();
    assert_eq!(line["message"], "step one", "{line}");
    // A chart that opens gets the last minutes at once, oldest first.
    let mut chart = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut chart,
        json!({"type": "subscribe-metrics", "host": "h", "application": "app", "history": 300}),
    )
    .await;
    let mut cpus = Vec::new();
    while cpus.last() != Some(&10.0) {
        let message = chart.recv_json(T).await.unwrap();
        cpus.push(message["cpu"].as_f64().unwrap());
    }
    assert_eq!(cpus.len(), 12, "{cpus:?}");
    assert!(
        cpus.windows(2).all(|w| w[1] < w[0]),
        "oldest first: {cpus:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_is_back_within_seconds_of_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let _agent = Agent::start_listed(&dir.path().join("agent"), &pki, &relay, "web-01", "")
        .await
        .unwrap();
    tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();
    let back = Instant::now();
    wait_for_host(&relay, "web-01").await.unwrap();
    // Loosely: the figure (about 1.5 s) is in BENCHMARKS.md.
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "{:?}",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_resume_of_big_batches_waits_for_the_client_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    // A small queue: the replay (20,000 lines in batches of 1,000) is many
    // times what it holds.
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[websocket]\nqueue_messages = 512\nqueue_bytes = 262144\n",
    )
    .unwrap();
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let epoch =
        subscribe(&mut ws, json!({"type": "subscribe-logs", "host": "none"})).await["epoch"]
            .as_u64()
            .unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    for b in 0..20u64 {
        let items = (0..1000)
            .map(|i| {
                log_item(
                    "app",
                    Level::Info,
                    &format!("line {:08} {}", b * 1000 + i, "x".repeat(100)),
                )
            })
            .collect();
        agent.send(items).await.unwrap();
    }
    let mut resumed = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut resumed,
        json!({"type": "subscribe-logs", "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    let mut numbers = Vec::new();
    while numbers.last() != Some(&19_999) {
        let message = resumed.recv_json(T).await.unwrap();
        assert_ne!(message["type"], "dropped", "{message}");
        numbers.extend(line_number(&message));
    }
    // Offset 0 itself was seen: everything after it.
    assert_eq!(numbers, (1..20_000).collect::<Vec<_>>());
}
