//! Several relays as one, on a real `nats-server -js`: an agent on relay A
//! and a browser on relay C; A killed with SIGKILL while lines are
//! written; the agent fails over to B; every line reaches C exactly once,
//! in order; a browser of A resumes on B with `since`; deployments and
//! `/api/hosts` agree across relays; NATS itself going away degrades the
//! relays without losing a line; garbage in the stream is skipped; a
//! restarted relay rebuilds its history from the stream.

use std::time::{Duration, Instant};

use o1_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn agent_extra(log: &std::path::Path, relays: &[&Relay]) -> String {
    let addresses: Vec<String> = relays.iter().map(|r| format!("\"{}\"", r.uplink)).collect();
    format!(
        "[relay]\naddresses = [{}]\nack_timeout_ms = 1000\n\n[metrics]\ninterval_ms = 500\n\n[logs]\nstart_at = \"beginning\"\n\n[[application]]\nname = \"web\"\nlogs = [\"{}\"]\n",
        addresses.join(", "),
        log.display()
    )
}

/// Subscribes; returns the ack (with `epoch`).
async fn subscribe(ws: &mut WsClient, request: Value) -> Value {
    ws.send_json(request).await.unwrap();
    let ack = ws.recv_json(T).await.unwrap();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ack
}

/// Reads numbered lines (and their offsets) until line `last`.
async fn lines_until(ws: &mut WsClient, last: u64, seen: &mut Vec<(u64, u64)>) {
    while seen.last().map(|(n, _)| *n) != Some(last) {
        let message = ws.recv_json(T).await.unwrap();
        assert_ne!(message["type"], "gap", "nothing was lost: {message}");
        if let Some(n) = line_number(&message) {
            seen.push((n, message["offset"].as_u64().expect("offset")));
        }
    }
}

async fn hosts(relay: &Relay) -> Value {
    let mut hosts = get_json(&relay.url("/api/hosts")).await.unwrap()["hosts"].clone();
    // `lastSeen` moves with every batch; the rest must agree.
    for host in hosts.as_array_mut().unwrap() {
        host.as_object_mut().unwrap().remove("lastSeen");
        for app in host["applications"].as_array_mut().unwrap() {
            app.as_object_mut().unwrap().remove("lastSeen");
        }
    }
    hosts
}

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_on_nats_deliver_every_line_once_across_a_relay_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let nats = Nats::start(&dir.path().join("nats")).unwrap();
    let mut a = Relay::start(&dir.path().join("a"), &pki, &nats.relay_config("a")).unwrap();
    let b = Relay::start(&dir.path().join("b"), &pki, &nats.relay_config("b")).unwrap();
    let c = Relay::start(&dir.path().join("c"), &pki, &nats.relay_config("c")).unwrap();
    for relay in [&a, &b, &c] {
        wait_healthy(relay).await.unwrap();
    }
    let log = dir.path().join("web.log");
    std::fs::write(&log, "").unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &pki,
        &a,
        "web-01",
        &agent_extra(&log, &[&a, &b]),
    )
    .unwrap();
    // Every relay lists the host, connected, the same way (from the
    // cluster's bucket, whichever relay the agent is on).
    for relay in [&a, &b, &c] {
        wait_for_host(relay, "web-01").await.unwrap();
    }
    let listed = eventually(T, || async {
        let (ha, hb, hc) = (hosts(&a).await, hosts(&b).await, hosts(&c).await);
        (ha == hb && hb == hc && ha.as_array().is_some_and(|h| h.len() == 1)).then_some(ha)
    })
    .await
    .expect("/api/hosts agrees on all three relays");
    assert_eq!(listed[0]["host"], "web-01");
    assert_eq!(listed[0]["connected"], true);

    let subscription = json!({"type": "subscribe-logs", "host": "web-01", "application": "web"});
    let mut on_c = WsClient::connect(&c.ws_url()).await.unwrap();
    let epoch_c = subscribe(&mut on_c, subscription.clone()).await["epoch"].clone();
    let mut on_a = WsClient::connect(&a.ws_url()).await.unwrap();
    let epoch_a = subscribe(&mut on_a, subscription.clone()).await["epoch"].clone();
    assert_eq!(epoch_a, epoch_c, "one history, one epoch");

    let total = 3000u64;
    // The longest wait between two lines on C is the pause a user sees.
    let reader_on_c = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut longest_pause = Duration::ZERO;
        let mut last_arrival = Instant::now();
        while seen.last().map(|(n, _)| *n) != Some(total - 1) {
            let message = on_c.recv_json(T).await.unwrap();
            assert_ne!(message["type"], "gap", "nothing was lost: {message}");
            if let Some(n) = line_number(&message) {
                seen.push((n, message["offset"].as_u64().expect("offset")));
                if n > 0 {
                    longest_pause = longest_pause.max(last_arrival.elapsed());
                }
                last_arrival = Instant::now();
            }
        }
        (seen, longest_pause, on_c)
    });
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for n in 0..total {
                append_numbered(&log, n, n + 1).unwrap();
                std::thread::sleep(Duration::from_micros(700));
            }
        })
    };
    // The browser on A sees a prefix; then A dies.
    let mut seen_on_a = Vec::new();
    lines_until(&mut on_a, 799, &mut seen_on_a).await;
    let killed_at = Instant::now();
    a.kill();
    while let Ok(message) = on_a.recv_json(Duration::from_millis(300)).await {
        if let Some(n) = line_number(&message) {
            seen_on_a.push((n, message["offset"].as_u64().unwrap()));
        }
    }
    // The browser on C (read all along): every line once, in order,
    // through the failover.
    let (seen_on_c, longest_pause, mut on_c) = reader_on_c.await.unwrap();
    writer.join().unwrap();
    let numbers: Vec<u64> = seen_on_c.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (0..total).collect::<Vec<_>>(),
        "every line exactly once, in order, on C"
    );
    assert!(
        seen_on_c.windows(2).all(|w| w[1].1 > w[0].1),
        "offsets grow"
    );
    let agent_log = agent.log();
    assert!(
        agent_log.contains(&format!("connected to the relay relay={}", b.uplink))
            || agent_log.contains(&b.uplink.to_string()),
        "the agent moved to B: {agent_log}"
    );
    // Measured, not asserted (BENCHMARKS.md, "Agent failover").
    eprintln!(
        "failover: longest pause between lines on C {longest_pause:?}; all {total} lines on C {:?} after the kill",
        killed_at.elapsed()
    );
    // Nothing arrives twice afterwards either.
    if let Ok(extra) = on_c.recv_json(Duration::from_millis(500)).await {
        panic!("nothing after the last line, got {extra}");
    }

    // The browser of A resumes on B with the offset A gave it.
    let numbers_a: Vec<u64> = seen_on_a.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers_a, (0..numbers_a.len() as u64).collect::<Vec<_>>());
    let (last_on_a, offset_on_a) = *seen_on_a.last().unwrap();
    let mut on_b = WsClient::connect(&b.ws_url()).await.unwrap();
    let mut resume = subscription.clone();
    resume["since"] = json!({"offset": offset_on_a, "epoch": epoch_a});
    subscribe(&mut on_b, resume).await;
    let mut resumed = Vec::new();
    lines_until(&mut on_b, total - 1, &mut resumed).await;
    let numbers: Vec<u64> = resumed.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (last_on_a + 1..total).collect::<Vec<_>>(),
        "exactly what A had not delivered, from B"
    );

    // A deployment created on B is followed on C.
    let token = Some(pki.token.as_str());
    let id = "deploy-20261128-120000";
    let (status, created) = post_with(
        &b.url("/api/deployments"),
        token,
        json!({"deploymentId": id, "application": "web", "hosts": ["web-01"]}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{created}");
    let mut follower = WsClient::connect(&c.ws_url()).await.unwrap();
    subscribe(
        &mut follower,
        json!({"type": "subscribe", "deploymentId": id}),
    )
    .await;
    let first = follower.recv_json(T).await.unwrap();
    assert_eq!(first["type"], "deployment", "{first}");
    assert_eq!(first["status"], "pending");
    let (status, _) = post_with(
        &b.url(&format!("/api/deployments/{id}/events")),
        token,
        json!({"status": "running", "progress": 40, "message": "Building",
               "logs": [{"message": "step one"}], "host": "web-01"}),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = post_with(
        &c.url(&format!("/api/deployments/{id}/events")),
        token,
        json!({"status": "completed", "message": "Done"}),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let mut kinds = Vec::new();
    while kinds.last() != Some(&"status".to_owned()) {
        let message = follower.recv_json(T).await.unwrap();
        kinds.push(message["type"].as_str().unwrap_or_default().to_owned());
        if message["type"] == "deployment" {
            assert!(message["offset"].as_u64().is_some(), "{message}");
        }
    }
    assert!(kinds.contains(&"log".to_owned()), "{kinds:?}");
    let on_c = get_json(&c.url(&format!("/api/deployments/{id}")))
        .await
        .unwrap();
    let on_b = get_json(&b.url(&format!("/api/deployments/{id}")))
        .await
        .unwrap();
    assert_eq!(on_c, on_b, "REST answers the same on every relay");
    assert_eq!(on_c["status"], "completed");
    // The same id again, on another relay: taken cluster-wide.
    let (status, _) = post_with(
        &c.url("/api/deployments"),
        token,
        json!({"deploymentId": id, "application": "web", "hosts": ["web-01"]}),
    )
    .await
    .unwrap();
    assert_eq!(status, 409);

    // B and C agree on the hosts after the failover.
    eventually(T, || async {
        let (hb, hc) = (hosts(&b).await, hosts(&c).await);
        (hb == hc && hb[0]["connected"] == true).then_some(())
    })
    .await
    .expect("/api/hosts agrees on B and C");
    let stats = get_json(&c.url("/api/websocket/stats")).await.unwrap();
    assert_eq!(stats["cluster"]["healthy"], true, "{stats}");
    assert!(stats["cluster"]["appliedSequence"].as_u64().unwrap() > 0);
    assert!(stats["cluster"]["duplicates"].as_u64().is_some());
    let applied = metric_value_with(&c, "o1_cluster_applied_sequence", token)
        .await
        .unwrap();
    assert!(applied > 0.0, "/metrics has the cluster's figures");
    // Lines a few hundred microseconds apart reach idle sockets straight
    // from the router (and the browser's client parsed those frames).
    let direct = metric_value_with(&c, "o1_websocket_messages_direct_total", token)
        .await
        .unwrap();
    assert!(direct > 0.0, "some lines were written at once");
    assert_eq!(
        metric_value_with(&c, "o1_cluster_healthy", token)
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_nats_the_relay_is_degraded_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut nats = Nats::start(&dir.path().join("nats")).unwrap();
    let relay = Relay::start(&dir.path().join("a"), &pki, &nats.relay_config("a")).unwrap();
    wait_healthy(&relay).await.unwrap();
    let log = dir.path().join("web.log");
    std::fs::write(&log, "").unwrap();
    let _agent = Agent::start(
        &dir.path().join("agent"),
        &pki,
        &relay,
        "web-01",
        &agent_extra(&log, &[&relay]),
    )
    .unwrap();
    wait_for_host(&relay, "web-01").await.unwrap();
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(
        &mut ws,
        json!({"type": "subscribe-logs", "host": "web-01", "application": "web"}),
    )
    .await;
    append_numbered(&log, 0, 100).unwrap();
    let mut seen = Vec::new();
    lines_until(&mut ws, 99, &mut seen).await;

    nats.kill();
    let health = eventually(T, || async {
        let response = reqwest::get(relay.url("/api/websocket/health"))
            .await
            .ok()?;
        let code = response.status().as_u16();
        let body: Value = response.json().await.ok()?;
        (body["status"] == "degraded").then_some((code, body))
    })
    .await
    .expect("health reports degraded");
    assert_eq!(health.0, 503);
    assert!(
        health.1["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("NATS"),
        "{}",
        health.1
    );
    // Written while NATS is away: spooled by the agent, not acked.
    append_numbered(&log, 100, 300).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The browser stays connected; nothing from the outage arrives yet
    // (decided: a relay serves no line it could not store in the stream).
    if let Ok(early) = ws.recv_json(Duration::from_millis(300)).await {
        panic!("no line before NATS is back, got {early}");
    }
    ws.send_json(json!({"type": "ping"})).await.unwrap();
    assert_eq!(ws.recv_json(T).await.unwrap()["type"], "pong");
    nats.restart().unwrap();
    wait_healthy(&relay).await.unwrap();
    lines_until(&mut ws, 299, &mut seen).await;
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (0..300).collect::<Vec<_>>(),
        "every line once, in order, across the outage"
    );
    assert!(
        relay.log().contains("NATS"),
        "the relay logged the outage: {}",
        relay.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_in_the_stream_is_skipped_and_a_restarted_relay_rebuilds_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let nats = Nats::start(&dir.path().join("nats")).unwrap();
    let a = Relay::start(&dir.path().join("a"), &pki, &nats.relay_config("a")).unwrap();
    let mut b = Relay::start(&dir.path().join("b"), &pki, &nats.relay_config("b")).unwrap();
    for relay in [&a, &b] {
        wait_healthy(relay).await.unwrap();
    }
    let mut agent = SimAgent::connect(&a, &pki, "web-01").await.unwrap();
    let line = |n: u64| log_item("app", o1_common::Level::Info, &format!("line {n:08} x"));
    let mut ws = WsClient::connect(&b.ws_url()).await.unwrap();
    let epoch =
        subscribe(&mut ws, json!({"type": "subscribe-logs", "host": "web-01"})).await["epoch"]
            .clone();
    for n in 0..50 {
        agent.send(vec![line(n)]).await.unwrap();
    }
    // Someone with access to NATS writes garbage into the stream's
    // subjects: every relay skips it and goes on.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for garbage in [&b"\xff\xfe not postcard"[..], b"", &[0u8; 70_000][..]] {
        js.publish("o1.log.evil.app", garbage.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for n in 50..100 {
        agent.send(vec![line(n)]).await.unwrap();
    }
    let mut seen = Vec::new();
    lines_until(&mut ws, 99, &mut seen).await;
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..100).collect::<Vec<_>>());
    assert!(b.log().contains("unreadable; skipped"), "{}", b.log());
    wait_healthy(&b).await.unwrap();

    // B killed and started again: it reads its history back from the
    // stream (tail, same epoch), and serves the host list from the bucket.
    tokio::task::block_in_place(|| b.kill_and_restart()).unwrap();
    wait_healthy(&b).await.unwrap();
    let mut tail = WsClient::connect(&b.ws_url()).await.unwrap();
    let ack = subscribe(
        &mut tail,
        json!({"type": "subscribe-logs", "host": "web-01", "tail": 10}),
    )
    .await;
    assert_eq!(ack["epoch"], epoch, "one stream, one epoch across restarts");
    let mut replayed = Vec::new();
    lines_until(&mut tail, 99, &mut replayed).await;
    let numbers: Vec<u64> = replayed.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (90..100).collect::<Vec<_>>());
    wait_for_host(&b, "web-01").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_started_before_nats_serves_degraded_then_joins() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut nats = Nats::start(&dir.path().join("nats")).unwrap();
    nats.kill();
    let relay = Relay::start(&dir.path().join("a"), &pki, &nats.relay_config("a")).unwrap();
    // Up and answering, but degraded: nothing could be stored.
    eventually(T, || async {
        let body = get_json(&relay.url("/api/websocket/health")).await.ok()?;
        let unreachable = body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("NATS unreachable"));
        (body["status"] == "degraded" && unreachable).then_some(())
    })
    .await
    .expect("health says NATS is unreachable");
    // An agent is turned away with the reason, and keeps its data.
    let refused = SimAgent::connect(&relay, &pki, "web-01").await;
    let reason = match refused {
        Ok(mut agent) => agent
            .send(vec![log_item("app", o1_common::Level::Info, "x")])
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    assert!(reason.contains("relay degraded"), "{reason}");
    nats.restart().unwrap();
    wait_healthy(&relay).await.unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "web-01").await.unwrap();
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    subscribe(&mut ws, json!({"type": "subscribe-logs", "host": "web-01"})).await;
    agent
        .send(vec![log_item(
            "app",
            o1_common::Level::Info,
            "line 00000001 after NATS came",
        )])
        .await
        .unwrap();
    let mut seen = Vec::new();
    lines_until(&mut ws, 1, &mut seen).await;
}
