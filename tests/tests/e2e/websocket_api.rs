//! The WebSocket API and REST statistics of the relay (issue: relay).

use std::time::Duration;

use o1_common::Level;
use o1_tests::{Closed, Pki, Relay, SimAgent, WsClient, get_json, log_item, metric_item};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

fn setup(extra: &str) -> (tempfile::TempDir, Pki, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, extra).unwrap();
    (dir, pki, relay)
}

#[tokio::test]
async fn every_message_type_and_error_of_the_contract() {
    let (_dir, pki, relay) = setup("");
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();

    // ping → pong, requestId echoed.
    client
        .send_json(json!({"type": "ping", "requestId": "p-1"}))
        .await
        .unwrap();
    let pong = client.recv_json(T).await.unwrap();
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["requestId"], "p-1");
    assert!(pong["timestamp"].as_str().unwrap().ends_with('Z'));

    // subscribe-logs, exactly as the seed page sends it.
    client
        .send_json(json!({"type": "subscribe-logs", "host": "test-anvil-01", "application": "Anvil", "search": "error", "requestId": 7}))
        .await
        .unwrap();
    let ack = client.recv_json(T).await.unwrap();
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(ack["requestId"], 7);
    let logs_id = ack["subscriptionId"].as_str().unwrap().to_owned();
    assert!(logs_id.starts_with("sub-"));

    let mut agent = SimAgent::connect(&relay, &pki, "test-anvil-01")
        .await
        .unwrap();
    agent
        .send(vec![
            log_item("Anvil", Level::Info, "all good"),
            log_item("Anvil", Level::Error, "An ERROR occurred"),
            log_item("Other", Level::Error, "error elsewhere"),
        ])
        .await
        .unwrap();
    let log = client.recv_json(T).await.unwrap();
    assert_eq!(log["type"], "log");
    assert_eq!(log["subscriptionId"], logs_id.as_str());
    assert_eq!(log["host"], "test-anvil-01");
    assert_eq!(log["application"], "Anvil");
    assert_eq!(log["level"], "ERROR");
    assert_eq!(log["message"], "An ERROR occurred");

    // subscribe-metrics: the latest sample is sent at once, with only the
    // selected metrics.
    agent.send(vec![metric_item("Anvil", 45.2)]).await.unwrap();
    let metrics_id = client
        .subscribe(json!({"type": "subscribe-metrics", "host": "test-anvil-01", "application": "Anvil", "metrics": ["cpu", "memory"]}))
        .await
        .unwrap();
    let sample = client.recv_json(T).await.unwrap();
    assert_eq!(sample["type"], "metrics");
    assert_eq!(sample["subscriptionId"], metrics_id.as_str());
    assert_eq!(sample["cpu"], 45.2);
    assert_eq!(sample["memory"], 50.0);
    assert!(
        sample.get("disk").is_none(),
        "disk was not selected: {sample}"
    );
    assert!(sample.get("network").is_none());
    // A live sample follows.
    agent.send(vec![metric_item("Anvil", 12.5)]).await.unwrap();
    let live = client.recv_json(T).await.unwrap();
    assert_eq!(live["cpu"], 12.5);

    // unsubscribe, then unsubscribe again: subscription_not_found.
    client
        .send_json(json!({"type": "unsubscribe", "subscriptionId": metrics_id, "requestId": "u"}))
        .await
        .unwrap();
    let done = client.recv_json(T).await.unwrap();
    assert_eq!(done["type"], "unsubscribed");
    assert_eq!(done["subscriptionId"], metrics_id.as_str());
    assert_eq!(done["requestId"], "u");
    client
        .send_json(json!({"type": "unsubscribe", "subscriptionId": metrics_id}))
        .await
        .unwrap();
    let error = client.recv_json(T).await.unwrap();
    assert_eq!(error["code"], "subscription_not_found");
    assert_eq!(error["details"]["subscriptionId"], metrics_id.as_str());
    // After unsubscribing, no more samples arrive for it.
    agent.send(vec![metric_item("Anvil", 99.0)]).await.unwrap();
    client.send_json(json!({"type": "ping"})).await.unwrap();
    assert_eq!(client.recv_json(T).await.unwrap()["type"], "pong");

    // Unknown deployment: the seed's error, exactly.
    client
        .send_json(json!({"type": "subscribe", "deploymentId": "non-existent-deployment"}))
        .await
        .unwrap();
    let error = client.recv_json(T).await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "subscription_failed");
    assert_eq!(error["message"], "Deployment not found");
    assert_eq!(error["details"]["deploymentId"], "non-existent-deployment");

    // Bad input: each answered with invalid_message naming the problem.
    let cases: [(&str, &str); 6] = [
        ("{not json", "not valid JSON"),
        (r#"{"type":"subscribe-everything"}"#, "unknown message type"),
        (r#"{"type":"subscribe-logs","tail":"ten"}"#, "tail"),
        (
            r#"{"type":"subscribe-metrics","metrics":["cpu","gpu"]}"#,
            "gpu",
        ),
        (
            r#"{"type":"subscribe-metrics","metrics":[]}"#,
            "at least one",
        ),
        (r#"{"type":"unsubscribe"}"#, "subscriptionId"),
    ];
    for (input, fragment) in cases {
        client.send_text(input).await.unwrap();
        let error = client.recv_json(T).await.unwrap();
        assert_eq!(error["code"], "invalid_message", "{input}");
        assert!(
            error["message"].as_str().unwrap().contains(fragment),
            "{input}: {error}"
        );
    }
    client
        .stream
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            0u8, 159, 146, 150,
        ]))
        .await
        .unwrap();
    let error = client.recv_json(T).await.unwrap();
    assert_eq!(error["code"], "invalid_message");
    assert!(error["message"].as_str().unwrap().contains("binary"));

    // Still serving this connection after all that.
    agent
        .send(vec![log_item("Anvil", Level::Error, "error again")])
        .await
        .unwrap();
    let log = client.recv_json(T).await.unwrap();
    assert_eq!(log["message"], "error again");
}

use futures_util::SinkExt;

#[tokio::test]
async fn level_filter_and_tail_replay() {
    let (_dir, pki, relay) = setup("");
    let mut agent = SimAgent::connect(&relay, &pki, "h1").await.unwrap();
    let levels = [
        Level::Debug,
        Level::Info,
        Level::Warning,
        Level::Error,
        Level::Critical,
    ];
    let items = (0..50)
        .map(|n| {
            log_item(
                "app",
                levels[n % 5],
                &format!("line {n:08} {:?}", levels[n % 5]),
            )
        })
        .collect();
    agent.send(items).await.unwrap();

    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs", "host": "h1", "level": "WARNING", "tail": 6}))
        .await
        .unwrap();
    let mut replayed = Vec::new();
    for _ in 0..6 {
        replayed.push(client.recv_json(T).await.unwrap());
    }
    let numbers: Vec<u64> = replayed.iter().filter_map(o1_tests::line_number).collect();
    assert_eq!(
        numbers,
        [42, 43, 44, 47, 48, 49],
        "last 6 lines at WARNING or above, in order"
    );
    agent
        .send(vec![
            log_item("app", Level::Info, "quiet"),
            log_item("app", Level::Warning, "line 00000100 live"),
        ])
        .await
        .unwrap();
    let live = client.recv_json(T).await.unwrap();
    assert_eq!(o1_tests::line_number(&live), Some(100), "{live}");
}

#[tokio::test]
async fn a_thousand_subscribed_connections_all_receive() {
    let (_dir, pki, relay) = setup("");
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
        client
            .subscribe(json!({"type": "subscribe-logs", "application": "app"}))
            .await
            .unwrap();
        clients.push(client);
    }
    let stats = get_json(&relay.url("/api/websocket/stats")).await.unwrap();
    assert_eq!(stats["totalConnections"], 1000);
    assert_eq!(stats["poolStats"]["active"], 1000);
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    agent
        .send(vec![log_item("app", Level::Info, "to everyone")])
        .await
        .unwrap();
    for client in &mut clients {
        let message = client.recv_json(T).await.unwrap();
        assert_eq!(message["message"], "to everyone");
    }
    let metrics = get_json(&relay.url("/api/websocket/metrics"))
        .await
        .unwrap();
    assert!(
        metrics["messages"]["sent"].as_u64().unwrap() >= 2000,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stalled_reader_does_not_slow_a_fast_one_and_is_told_what_it_missed() {
    let (_dir, pki, relay) =
        setup("[websocket]\nqueue_messages = 2048\nstall_timeout_secs = 3600\n");
    let mut slow = WsClient::connect(&relay.ws_url()).await.unwrap();
    let slow_id = slow
        .subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();
    let mut fast = WsClient::connect(&relay.ws_url()).await.unwrap();
    fast.subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();

    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    let padding = "p".repeat(900);
    let total = 20_000u64;
    let reader = tokio::spawn(async move {
        let mut expected = 0u64;
        while expected < total {
            let message = fast.recv_json(Duration::from_secs(30)).await.unwrap();
            assert_eq!(
                o1_tests::line_number(&message),
                Some(expected),
                "fast reader in order"
            );
            expected += 1;
        }
        expected
    });
    for chunk in 0..(total / 500) {
        let items = (chunk * 500..(chunk + 1) * 500)
            .map(|n| log_item("app", Level::Info, &format!("line {n:08} {padding}")))
            .collect();
        agent.send(items).await.unwrap();
    }
    assert_eq!(
        reader.await.unwrap(),
        total,
        "the fast reader got every line"
    );

    let metrics = get_json(&relay.url("/api/websocket/metrics"))
        .await
        .unwrap();
    let dropped = metrics["messages"]["dropped"].as_u64().unwrap();
    assert!(
        dropped > 0,
        "the stalled reader's excess was dropped and counted: {metrics}"
    );

    // The slow reader reads again: what was queued, then how many it missed.
    let seen = slow
        .recv_until(Duration::from_secs(30), |m| m["type"] == "dropped")
        .await
        .unwrap();
    let notice = seen.last().unwrap();
    assert_eq!(notice["subscriptionId"], slow_id.as_str());
    let received = seen.iter().filter(|m| m["type"] == "log").count() as u64;
    assert_eq!(
        notice["count"].as_u64().unwrap(),
        dropped,
        "count = dropped"
    );
    assert!(received + dropped <= total);
    let numbers: Vec<u64> = seen.iter().filter_map(o1_tests::line_number).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "what it got is in order"
    );
}

#[tokio::test]
async fn a_reader_that_stays_stalled_is_closed_with_4008() {
    let (_dir, pki, relay) = setup(
        "[websocket]\nqueue_messages = 64\nstall_timeout_secs = 1\nping_interval_secs = 1\nping_timeout_secs = 600\n",
    );
    let mut slow = WsClient::connect(&relay.ws_url()).await.unwrap();
    slow.subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    let padding = "p".repeat(4000);
    for chunk in 0..20u64 {
        let items = (0..500)
            .map(|n| {
                log_item(
                    "app",
                    Level::Info,
                    &format!("line {:08} {padding}", chunk * 500 + n),
                )
            })
            .collect();
        agent.send(items).await.unwrap();
    }
    // Keep the queue full past the stall timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent
        .send(vec![log_item("app", Level::Info, "more")])
        .await
        .unwrap();
    let closed = slow.closed(Duration::from_secs(60)).await.unwrap();
    assert!(
        matches!(&closed, Closed::Frame { code: 4008, reason } if reason.contains("slow reader"))
            || closed == Closed::WithoutFrame,
        "{closed:?}"
    );
    let url = relay.url("/metrics");
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("o1_websocket_slow_readers_closed_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn rate_limiting_answers_with_retry_after_then_recovers() {
    let (_dir, _pki, relay) =
        setup("[websocket]\nmessages_per_second = 2\nburst = 3\nabuse_limit = 1000\n");
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    for i in 0..8 {
        client
            .send_json(json!({"type": "ping", "requestId": i}))
            .await
            .unwrap();
    }
    let mut pongs = 0;
    let mut limited = Vec::new();
    for _ in 0..8 {
        let reply = client.recv_json(T).await.unwrap();
        match reply["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => limited.push(reply),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (3..8).contains(&pongs),
        "burst of 3 passes, the rest does not: {pongs}"
    );
    let error = &limited[0];
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["message"], "Too many messages");
    let retry_after = error["retryAfter"].as_u64().unwrap();
    assert!(retry_after >= 1);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    client.send_json(json!({"type": "ping"})).await.unwrap();
    assert_eq!(
        client.recv_json(T).await.unwrap()["type"],
        "pong",
        "recovered after retryAfter"
    );
}

#[tokio::test]
async fn persistent_abuse_is_closed_with_1008_and_others_are_served() {
    let (_dir, _pki, relay) =
        setup("[websocket]\nmessages_per_second = 1\nburst = 1\nabuse_limit = 5\n");
    let mut abuser = WsClient::connect(&relay.ws_url()).await.unwrap();
    let mut neighbour = WsClient::connect(&relay.ws_url()).await.unwrap();
    for _ in 0..50 {
        if abuser.send_json(json!({"type": "ping"})).await.is_err() {
            break;
        }
    }
    let closed = abuser.closed(T).await.unwrap();
    assert_eq!(
        closed,
        Closed::Frame {
            code: 1008,
            reason: "rate limit exceeded repeatedly".into()
        }
    );
    neighbour.send_json(json!({"type": "ping"})).await.unwrap();
    assert_eq!(neighbour.recv_json(T).await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_others_are_served() {
    let (_dir, _pki, relay) = setup("[websocket]\nmax_message_bytes = 1024\n");
    let mut big = WsClient::connect(&relay.ws_url()).await.unwrap();
    let mut other = WsClient::connect(&relay.ws_url()).await.unwrap();
    let huge = format!(r#"{{"type":"ping","requestId":"{}"}}"#, "x".repeat(100_000));
    let _ = big.send_text(&huge).await;
    let closed = big.closed(T).await.unwrap();
    assert!(
        matches!(&closed, Closed::Frame { code: 1009, .. }),
        "{closed:?}"
    );
    other.send_json(json!({"type": "ping"})).await.unwrap();
    assert_eq!(other.recv_json(T).await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn subscription_and_connection_limits() {
    let (_dir, _pki, relay) =
        setup("[websocket]\nmax_subscriptions = 2\nmax_connections_per_address = 2\n");
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();
    client
        .subscribe(json!({"type": "subscribe-metrics"}))
        .await
        .unwrap();
    client
        .send_json(json!({"type": "subscribe-logs", "requestId": 3}))
        .await
        .unwrap();
    let error = client.recv_json(T).await.unwrap();
    assert_eq!(error["code"], "subscription_failed");
    assert_eq!(error["requestId"], 3);
    assert_eq!(error["details"]["limit"], 2);

    let _second = WsClient::connect(&relay.ws_url()).await.unwrap();
    let mut third = WsClient::connect(&relay.ws_url()).await.unwrap();
    let error = third.recv_json(T).await.unwrap();
    assert_eq!(error["code"], "connection_failed");
    let closed = third.closed(T).await.unwrap();
    assert!(
        matches!(closed, Closed::Frame { code: 1013, .. }),
        "{closed:?}"
    );
    let metrics = get_json(&relay.url("/api/websocket/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics["connections"]["current"], 2, "{metrics}");
}

#[tokio::test]
async fn silent_peers_are_dropped_by_the_server_ping() {
    let (_dir, _pki, relay) = setup("[websocket]\nping_interval_secs = 1\nping_timeout_secs = 1\n");
    // A raw TCP peer that upgrades and then never answers anything.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(relay.http).await.unwrap();
    let request = format!(
        "GET /api/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        relay.http
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = [0u8; 512];
    let n = tcp.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("101"));
    o1_tests::eventually(Duration::from_secs(10), || async {
        let metrics = get_json(&relay.url("/api/websocket/metrics")).await.ok()?;
        (metrics["connections"]["current"] == 0).then_some(())
    })
    .await
    .expect("dead peer dropped");
}

#[tokio::test]
async fn stats_report_exactly_what_happened() {
    let (_dir, pki, relay) = setup("[websocket]\nqueue_messages = 16\n");
    let health = get_json(&relay.url("/api/websocket/health")).await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["connectionCount"], 0);

    let mut subscriber = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscriber
        .subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap(); // received 1, sent 1
    let mut idle = WsClient::connect(&relay.ws_url()).await.unwrap();
    idle.send_json(json!({"type": "ping"})).await.unwrap(); // received 2, sent 2
    idle.recv_json(T).await.unwrap();
    {
        let _gone = WsClient::connect(&relay.ws_url()).await.unwrap();
    }
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    agent
        .send(
            (0..5)
                .map(|n| log_item("app", Level::Info, &format!("line {n:08}")))
                .collect(),
        )
        .await
        .unwrap(); // sent 7
    for _ in 0..5 {
        subscriber.recv_json(T).await.unwrap();
    }
    let stats = o1_tests::eventually(T, || async {
        let metrics = get_json(&relay.url("/api/websocket/metrics")).await.ok()?;
        (metrics["connections"]["current"] == 2).then_some(metrics)
    })
    .await
    .unwrap();
    assert_eq!(
        stats["connections"],
        json!({"current": 2, "peak": 3, "total": 3})
    );
    assert_eq!(stats["messages"]["received"], 2);
    assert_eq!(stats["messages"]["sent"], 7);
    assert_eq!(stats["messages"]["dropped"], 0);
    assert!(
        stats["performance"]["uptime"]
            .as_str()
            .unwrap()
            .ends_with('m')
    );
    assert!(
        stats["performance"]["memoryUsage"]
            .as_str()
            .unwrap()
            .ends_with("MB")
    );
    assert!(
        stats["performance"]["cpuUsage"]
            .as_str()
            .unwrap()
            .ends_with('%')
    );

    let ws_stats = get_json(&relay.url("/api/websocket/stats")).await.unwrap();
    assert_eq!(ws_stats["totalConnections"], 2);
    assert_eq!(
        ws_stats["poolStats"],
        json!({"active": 1, "idle": 1, "total": 2})
    );
    assert_eq!(ws_stats["batcherStats"]["batchesProcessed"], 1);
    assert_eq!(ws_stats["batcherStats"]["messagesProcessed"], 5);
    assert_eq!(ws_stats["batcherStats"]["averageBatchSize"], 5);
    assert_eq!(ws_stats["processorStats"]["errors"], 0);
    assert_eq!(ws_stats["processorStats"]["successRate"], 100.0);
    let p99 = ws_stats["performanceMetrics"]["p99"].as_f64().unwrap();
    assert!(p99 > 0.0, "latency measured: {ws_stats}");
    assert!(ws_stats["performanceMetrics"]["p95"].as_f64().unwrap() <= p99);

    let prometheus = o1_tests::metrics_text(&relay).await.unwrap();
    assert!(
        prometheus.contains("o1_websocket_connections_open 2\n"),
        "{prometheus}"
    );
    assert!(prometheus.contains("o1_websocket_messages_sent_total 7\n"));
    assert!(prometheus.contains("# TYPE o1_ingest_items counter"));

    // Unknown REST paths get a JSON error, not a crash.
    let response = reqwest::get(relay.url("/api/nope")).await.unwrap();
    assert_eq!(response.status(), 404);
    let _: Value = response.json().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_with_1001_and_exits_within_the_grace_period() {
    let (_dir, _pki, mut relay) = setup("[shutdown]\ngrace_secs = 5\n");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
        client
            .subscribe(json!({"type": "subscribe-logs"}))
            .await
            .unwrap();
        clients.push(client);
    }
    let started = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(8))).unwrap();
    for client in &mut clients {
        let closed = client.closed(T).await.unwrap();
        assert_eq!(
            closed,
            Closed::Frame {
                code: 1001,
                reason: "server shutting down".into()
            }
        );
    }
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// A line alone in its batch, to 600 subscribers: the relay writes it to
/// their sockets itself, split across two threads (`fanout_threads`, at
/// least 256 subscribers each). Every subscriber still gets every line,
/// once, in order: a pass's threads finish before the next line is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_written_at_once_to_600_subscribers_on_two_threads_arrives_once_in_order() {
    const SUBSCRIBERS: usize = 600;
    const LINES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[websocket]\nfanout_threads = 2\n",
    )
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
        let id = client
            .subscribe(json!({"type": "subscribe-logs", "host": "fan-01"}))
            .await
            .unwrap();
        clients.push((client, id));
    }
    let mut agent = SimAgent::connect(&relay, &pki, "fan-01").await.unwrap();
    for n in 0..LINES {
        agent
            .send(vec![log_item("app", Level::Info, &format!("line {n}"))])
            .await
            .unwrap();
        // Past the relay's 1 ms gap: each line may be written at once.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (client, id) in &mut clients {
        for n in 0..LINES {
            let log = client.recv_json(T).await.unwrap();
            assert_eq!(log["subscriptionId"], id.as_str(), "{log}");
            assert_eq!(log["message"], format!("line {n}"), "{log}");
        }
    }
    // Nothing more: no line twice.
    for (client, _) in clients.iter_mut().take(20) {
        assert!(client.recv_json(Duration::from_millis(50)).await.is_err());
    }
    let direct = o1_tests::metric_value(&relay, "o1_websocket_messages_direct_total")
        .await
        .unwrap();
    assert!(
        direct >= (SUBSCRIBERS * LINES / 2) as f64,
        "most deliveries written at once: {direct}"
    );
}

/// Connections that leave give their direct-write slots back and new ones
/// take them: a line for the old subscriptions must never reach the socket
/// that now holds a reused slot, and the new ones get only their own.
#[tokio::test]
async fn slots_given_back_by_closed_connections_carry_no_line_to_their_new_owners() {
    // More than one chunk of 64 slots, so reuse crosses chunks.
    const FIRST: usize = 100;
    const CLOSED: usize = 40;
    const LINES: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let mut old = Vec::new();
    for _ in 0..FIRST {
        let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
        let id = client
            .subscribe(json!({"type": "subscribe-logs", "host": "old-01"}))
            .await
            .unwrap();
        old.push((client, id));
    }
    // Every other one of the first 2 × CLOSED leaves.
    let mut kept = Vec::new();
    for (i, (client, id)) in old.into_iter().enumerate() {
        if i % 2 == 0 && i < 2 * CLOSED {
            drop(client);
        } else {
            kept.push((client, id));
        }
    }
    // The relay notices the closes (the subscriptions go) before the new
    // connections come.
    let mut open = f64::MAX;
    for _ in 0..250 {
        open = o1_tests::metric_value(&relay, "o1_websocket_connections_open")
            .await
            .unwrap_or(f64::MAX);
        if open <= (FIRST - CLOSED) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open,
        (FIRST - CLOSED) as f64,
        "the closed connections ended"
    );
    let mut new = Vec::new();
    for _ in 0..CLOSED {
        let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
        let id = client
            .subscribe(json!({"type": "subscribe-logs", "host": "new-01"}))
            .await
            .unwrap();
        new.push((client, id));
    }
    let mut old_agent = SimAgent::connect(&relay, &pki, "old-01").await.unwrap();
    let mut new_agent = SimAgent::connect(&relay, &pki, "new-01").await.unwrap();
    for n in 0..LINES {
        for (agent, host) in [(&mut old_agent, "old"), (&mut new_agent, "new")] {
            agent
                .send(vec![log_item("app", Level::Info, &format!("{host} {n}"))])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (clients, host) in [(&mut kept, "old"), (&mut new, "new")] {
        for (client, id) in clients.iter_mut() {
            for n in 0..LINES {
                let log = client.recv_json(T).await.unwrap();
                assert_eq!(log["subscriptionId"], id.as_str(), "{log}");
                assert_eq!(log["message"], format!("{host} {n}"), "{log}");
            }
        }
    }
    for (client, _) in kept.iter_mut().chain(new.iter_mut()).take(40) {
        assert!(client.recv_json(Duration::from_millis(30)).await.is_err());
    }
}
