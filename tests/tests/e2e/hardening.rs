//! Hostile clients against the real relay: each attack of the hardening
//! issue, and the bound that holds (issue: relay hardening).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use o1_tests::{Pki, Relay, WsClient, get_json};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

fn relay(extra: &str) -> (tempfile::TempDir, Pki, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, extra).unwrap();
    (dir, pki, relay)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn metric(relay: &Relay, name: &str) -> f64 {
    o1_tests::metric_value(relay, name).await.unwrap()
}

/// Reads until the close frame; returns (messages, close code and reason).
async fn read_to_close(client: &mut WsClient) -> (Vec<Value>, Option<(u16, String)>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(T, client.stream.next()).await {
            Err(_) => panic!("no close within {T:?} after {} messages", messages.len()),
            Ok(None) | Ok(Some(Err(_))) => return (messages, None),
            Ok(Some(Ok(Message::Text(text)))) => {
                messages.push(serde_json::from_str(text.as_str()).unwrap())
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (
                    messages,
                    frame.map(|f| (f.code.into(), f.reason.to_string())),
                );
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_client_receives_its_errors_and_the_1008_close_frame() {
    let (_dir, _pki, relay) =
        relay("[websocket]\nmessages_per_second = 2\nburst = 2\nabuse_limit = 10\n");
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    // 223 messages sent before reading anything, as a script would.
    for i in 0..223 {
        client
            .send_json(json!({"type": "ping", "requestId": i}))
            .await
            .unwrap();
    }
    let (messages, close) = read_to_close(&mut client).await;
    let limited = messages
        .iter()
        .filter(|m| m["code"] == "rate_limit_exceeded")
        .count();
    assert!(
        limited >= 10,
        "its rate_limit_exceeded errors arrive: {messages:?}"
    );
    assert!(
        messages
            .iter()
            .all(|m| m["type"] == "pong" || m["code"] == "rate_limit_exceeded")
    );
    let (code, reason) = close.expect("a close frame, not a reset");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");

    // WebSocket ping frames are messages too: a flood of them is closed
    // the same way.
    let mut pinger = WsClient::connect(&relay.ws_url()).await.unwrap();
    for _ in 0..200 {
        if pinger
            .stream
            .send(Message::Ping(Vec::new().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (_, close) = read_to_close(&mut pinger).await;
    assert_eq!(close.map(|c| c.0), Some(1008));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_bounded_in_bytes_and_closed_while_it_pings() {
    let (_dir, pki, relay) = relay(
        "[websocket]\nstall_timeout_secs = 3\nqueue_bytes = 1048576\nmessages_per_second = 200\nburst = 200\n",
    );
    let http = reqwest::Client::new();
    let id = "deploy-big";
    let created = http
        .post(relay.url("/api/deployments"))
        .bearer_auth(&pki.token)
        .json(&json!({"deploymentId": id, "application": "web", "hosts": ["h"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // 1,000 log lines of 1 KB.
    for chunk in 0..10 {
        let logs: Vec<Value> = (0..100)
            .map(|i| json!({"level": "INFO", "message": format!("{chunk:02}{i:03} {}", "x".repeat(1018))}))
            .collect();
        let response = http
            .post(relay.url(&format!("/api/deployments/{id}/events")))
            .bearer_auth(&pki.token)
            .json(&json!({"logs": logs}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
    let before = rss_kib(relay.pid());
    let (stream, _) = tokio_tungstenite::connect_async(relay.ws_url())
        .await
        .unwrap();
    let (mut sink, stream) = stream.split();
    // 100 subscriptions to the deployment: 100 replays of 1 MB each.
    for i in 0..100 {
        let text = json!({"type": "subscribe", "deploymentId": id, "requestId": i}).to_string();
        sink.send(Message::text(text)).await.unwrap();
    }
    // Never read; ping every second.
    let pinging = tokio::spawn(async move {
        for _ in 0..30 {
            if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sink
    });
    // Live lines keep coming: the relay has something to write, and
    // cannot.
    let publishing = {
        let (http, url, token) = (
            http.clone(),
            relay.url(&format!("/api/deployments/{id}/events")),
            pki.token.clone(),
        );
        tokio::spawn(async move {
            for n in 0..100 {
                let logs = json!({"logs": [{"message": format!("live {n} {}", "y".repeat(1000))}]});
                let _ = http.post(&url).bearer_auth(&token).json(&logs).send().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_kib(relay.pid()).saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "the relay holds at most the budget for it: grew {grown} KiB"
    );
    // Closed as a slow reader after the stall timeout, pings or not.
    o1_tests::eventually(Duration::from_secs(15), || async {
        let stats = get_json(&relay.url("/api/websocket/metrics")).await.ok()?;
        (stats["connections"]["current"] == 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let text = tokio::task::block_in_place(|| {
            std::process::Command::new("curl")
                .arg("-s")
                .arg(relay.url("/metrics"))
                .output()
                .unwrap()
                .stdout
        });
        panic!(
            "the never-reading connection is closed: {e}: {} {}",
            String::from_utf8_lossy(&text),
            relay.log()
        )
    });
    assert!(metric(&relay, "o1_websocket_slow_readers_closed_total").await >= 1.0);
    assert!(metric(&relay, "o1_websocket_messages_dropped_total").await > 0.0);
    drop(stream);
    pinging.abort();
    publishing.abort();
}

#[tokio::test]
async fn oversized_fields_are_invalid_and_subscriptions_are_budgeted_per_address() {
    let (_dir, _pki, relay) = relay("[websocket]\nmax_subscriptions_per_address = 5\n");
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    let long = "h".repeat(60 * 1024);
    let cases = [
        (
            json!({"type": "subscribe-logs", "host": long, "requestId": 1}),
            "host",
        ),
        (
            json!({"type": "subscribe-logs", "application": "a".repeat(257), "requestId": 2}),
            "application",
        ),
        (
            json!({"type": "subscribe-logs", "search": "s".repeat(4096), "requestId": 3}),
            "search",
        ),
        (
            json!({"type": "subscribe-metrics", "host": "h".repeat(300), "requestId": 4}),
            "host",
        ),
        (
            json!({"type": "subscribe", "deploymentId": "d".repeat(300), "requestId": 5}),
            "deploymentId",
        ),
    ];
    for (request, field) in cases {
        let id = request["requestId"].clone();
        client.send_json(request).await.unwrap();
        let reply = client.recv_json(T).await.unwrap();
        assert_eq!(reply["code"], "invalid_message", "{reply}");
        assert_eq!(reply["requestId"], id);
        let text = reply["message"].as_str().unwrap();
        assert!(text.contains(field) && text.contains("at most"), "{text}");
    }
    // At the limit exactly: accepted.
    client
        .subscribe(json!({"type": "subscribe-logs", "host": "h".repeat(256)}))
        .await
        .unwrap();
    // Five subscriptions per address, across connections.
    let mut other = WsClient::connect(&relay.ws_url()).await.unwrap();
    for _ in 0..4 {
        other
            .subscribe(json!({"type": "subscribe-logs"}))
            .await
            .unwrap();
    }
    other
        .send_json(json!({"type": "subscribe-logs", "requestId": "sixth"}))
        .await
        .unwrap();
    let refused = other.recv_json(T).await.unwrap();
    assert_eq!(refused["code"], "subscription_failed", "{refused}");
    assert_eq!(refused["requestId"], "sixth");
    // Closing a connection gives its share back.
    drop(client);
    o1_tests::eventually(Duration::from_secs(5), || async {
        let mut again = WsClient::connect(&relay.ws_url()).await.ok()?;
        again
            .subscribe(json!({"type": "subscribe-logs"}))
            .await
            .ok()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn idle_and_slowloris_http_sockets_are_closed_and_a_full_listener_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _pki, relay) = relay("[http]\nheader_timeout_secs = 1\nmax_connections = 10\n");
    let health = relay.url("/api/websocket/health");
    let mut sockets = Vec::new();
    for _ in 0..9 {
        sockets.push(tokio::net::TcpStream::connect(relay.http).await.unwrap());
    }
    // Slowloris: headers that never end.
    let mut slow = tokio::net::TcpStream::connect(relay.http).await.unwrap();
    slow.write_all(b"GET /api/websocket/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    sockets.push(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Full: a fresh request is told so at once.
    let refused = reqwest::get(&health).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "connection_failed", "{body}");
    // The relay closes them after the header timeout...
    for (i, socket) in sockets.iter_mut().enumerate() {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "socket {i} is still open after the header timeout"
        );
    }
    // ...and then serves everyone again.
    let served = reqwest::get(&health).await.unwrap();
    assert_eq!(served.status(), 200);
    assert!(metric(&relay, "o1_http_connections_refused_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_are_capped_expire_cut_long_lines_and_list_in_pages() {
    let (_dir, pki, relay) = relay(
        "[deployments]\nmax_active = 3\nactive_ttl_secs = 2\n\n[history]\nmax_line_bytes = 1024\n",
    );
    let http = reqwest::Client::new();
    let create = |id: String| {
        let (http, url, token) = (
            http.clone(),
            relay.url("/api/deployments"),
            pki.token.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"deploymentId": id, "application": "web"}))
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..3 {
        assert_eq!(create(format!("d{i}")).await.status(), 201);
    }
    let refused = create("d3".into()).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("at most 3"),
        "{body}"
    );

    // A subscriber of d0 sees a 1 MiB line cut, then d0 time out.
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe", "deploymentId": "d0"}))
        .await
        .unwrap();
    let huge = "z".repeat(1 << 20);
    let posted = http
        .post(relay.url("/api/deployments/d0/events"))
        .bearer_auth(&pki.token)
        .json(&json!({"logs": [{"message": huge}]}))
        .send()
        .await
        .unwrap();
    assert!(posted.status().is_success(), "{}", posted.status());
    let seen = client
        .recv_until(T, |m| m["type"] == "status")
        .await
        .unwrap();
    let line = seen.iter().find(|m| m["type"] == "log").expect("the line");
    let text = line["message"].as_str().unwrap();
    assert!(
        text.len() <= 1024 + 16 && text.ends_with("…[truncated]"),
        "{}",
        text.len()
    );
    let status = seen.last().unwrap();
    assert_eq!(status["status"], "failed");
    assert!(
        status["message"].as_str().unwrap().contains("timed out"),
        "{status}"
    );

    // The expired ones no longer count: new ones are accepted, and the
    // list comes in pages, newest first, every deployment once.
    let mut created = Vec::new();
    for i in 10..15 {
        let id = format!("d{i}");
        // Each sweep (every 2 s here) ends the ones silent for 2 s.
        o1_tests::eventually(Duration::from_secs(10), || async {
            (create(id.clone()).await.status() == 201).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        created.push(id);
    }
    let mut listed = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let url = match &before {
            Some(id) => relay.url(&format!("/api/deployments?limit=2&before={id}")),
            None => relay.url("/api/deployments?limit=2"),
        };
        let page = get_json(&url).await.unwrap();
        let items = page["deployments"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        listed.extend(
            items
                .iter()
                .map(|d| d["deploymentId"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        listed.len(),
        "no deployment twice: {listed:?}"
    );
    assert_eq!(listed.len(), 8, "{listed:?}");
    assert_eq!(listed[0], "d14", "newest first: {listed:?}");
    let bad = reqwest::get(relay.url("/api/deployments?limit=many"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// `line 00000042 …` as an agent would send it.
fn numbered_log(n: u64) -> o1_common::wire::Item {
    o1_tests::log_item(
        "app",
        o1_common::Level::Info,
        &format!("line {n:08} 2026-11-28T14:00:00Z INFO GET /items/{n} 200"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_replays_under_ingest_are_exact_and_budgeted_per_connection() {
    let (_dir, pki, relay) = relay(
        "[history]\nlines_per_source = 1000\n\n[websocket]\nreplay_lines_per_second = 1\nreplay_burst = 1500\n",
    );
    let mut agent = o1_tests::SimAgent::connect(&relay, &pki, "busy")
        .await
        .unwrap();
    let mut next = 0u64;
    for _ in 0..20 {
        agent
            .send((next..next + 100).map(numbered_log).collect())
            .await
            .unwrap();
        next += 100;
    }
    // Ingest goes on while subscribers join with `tail`: each must see a
    // contiguous run, history then live, no gap and no repeat.
    let total = 6000u64;
    let publisher = tokio::spawn(async move {
        let mut next = next;
        while next < total {
            agent
                .send((next..next + 50).map(numbered_log).collect())
                .await
                .unwrap();
            next += 50;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        agent
    });
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
        client
            .subscribe(json!({"type": "subscribe-logs", "host": "busy", "tail": 1000}))
            .await
            .unwrap();
        clients.push(client);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.last() != Some(&(total - 1)) {
            let message = client.recv_json(T).await.unwrap();
            if let Some(n) = o1_tests::line_number(&message) {
                seen.push(n);
            }
        }
        assert_eq!(
            seen.len(),
            1000 + (total - 1 - seen[0]) as usize - 999,
            "client {i}"
        );
        assert!(
            seen.windows(2).all(|w| w[1] == w[0] + 1),
            "client {i}: history then live, contiguous: starts at {}",
            seen[0]
        );
    }
    publisher.await.unwrap();

    // The replay budget (1,500 lines in a burst here) is per connection:
    // a second tail of 1,000 gets the newest 500 and is told of the rest.
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    for round in 0..2 {
        let id = client
            .subscribe(json!({"type": "subscribe-logs", "host": "busy", "tail": 1000}))
            .await
            .unwrap();
        let mut lines = Vec::new();
        let mut dropped = 0;
        while let Ok(message) = client.recv_json(Duration::from_millis(800)).await {
            if message["subscriptionId"] != id {
                continue;
            }
            match message["type"].as_str() {
                Some("log") => lines.push(o1_tests::line_number(&message).unwrap()),
                Some("dropped") => dropped += message["count"].as_u64().unwrap(),
                _ => {}
            }
        }
        let expected = if round == 0 { 1000 } else { 500 };
        assert_eq!(lines.len(), expected, "round {round}");
        assert_eq!(lines.last(), Some(&(total - 1)), "the newest lines");
        assert_eq!(
            dropped as usize,
            1000 - expected,
            "round {round}: the rest is announced"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_does_not_follow_symlinks_unless_told_and_keeps_its_state_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = crate::tailing::setup();
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, "line 99999999 the contents of a private file\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    std::os::unix::fs::symlink(&secret, s.log_dir.join("evil.log")).unwrap();
    // A second application that opts in.
    let linked_dir = s.dir.path().join("linked");
    std::fs::create_dir_all(&linked_dir).unwrap();
    let target = s.dir.path().join("real.log");
    std::fs::write(
        &target,
        "line 00000005 through a link the operator wanted\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&target, linked_dir.join("current.log")).unwrap();
    let config = crate::tailing::agent_config(&s.log_dir.join("*.log"), "")
        + &format!(
            "[[application]]\nname = \"linked\"\nfollow_symlinks = true\nlogs = [\"{}/*.log\"]\n",
            linked_dir.display()
        );
    let agent_dir = s.dir.path().join("agent");
    let agent = o1_tests::Agent::start_listed(&agent_dir, &s.pki, &s.relay, "tail-host", &config)
        .await
        .unwrap();
    let mut client = crate::tailing::subscribe(&s.relay).await;
    o1_tests::append_numbered(&log, 0, 5).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let message = client.recv_json(T).await.unwrap();
        let n = o1_tests::line_number(&message).unwrap();
        assert_ne!(
            n, 99_999_999,
            "the linked private file was shipped: {message}"
        );
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    while let Ok(message) = client.recv_json(Duration::from_millis(1500)).await {
        assert_ne!(
            o1_tests::line_number(&message),
            Some(99_999_999),
            "{message}"
        );
    }
    let text = agent.log();
    assert!(
        text.contains("symbolic link") && text.contains("evil.log"),
        "{text}"
    );
    // State: a private directory, private files.
    let state = agent_dir.join("state");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    o1_tests::eventually(Duration::from_secs(10), || async {
        state.join("checkpoint.json").exists().then_some(())
    })
    .await
    .unwrap();
    assert_eq!(mode(&state.join("checkpoint.json")), 0o600);
    assert_eq!(mode(&state.join("agent-id")), 0o600);
    for segment in std::fs::read_dir(state.join("spool")).unwrap() {
        assert_eq!(mode(&segment.unwrap().path()), 0o600);
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_limits_count_the_forwarded_client() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_dir, _pki, relay) = relay(
        "[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[websocket]\nmax_connections_per_address = 2\n",
    );
    let connect = |client: &'static str| {
        let url = relay.ws_url();
        async move {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("x-forwarded-for", client.parse().unwrap());
            let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            WsClient { stream }
        }
    };
    let _a = connect("203.0.113.5").await;
    let _b = connect("203.0.113.5").await;
    let mut third = connect("203.0.113.5").await;
    let error = third.recv_json(T).await.unwrap();
    assert_eq!(error["code"], "connection_failed", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("203.0.113.5"),
        "{error}"
    );
    assert!(matches!(
        third.closed(T).await.unwrap(),
        o1_tests::Closed::Frame { code: 1013, .. }
    ));
    // Another client behind the same proxy is not affected.
    let mut other = connect("198.51.100.7").await;
    other
        .subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_uplink_refuses_huge_hellos_bad_names_and_too_many_applications() {
    let (_dir, pki, relay) = relay("");
    let connect = |settings: o1_agent::uplink::UplinkSettings| async move {
        let endpoint = o1_agent::uplink::endpoint(&settings).unwrap();
        o1_agent::uplink::connect(&endpoint, &settings, &settings.addresses[0])
            .await
            .map(|_| ())
    };
    // A 2 MB hello (2,000 applications of 1 KB): refused from its length.
    let mut huge = o1_tests::sim_settings(&relay, &pki, "huge", &pki.token);
    huge.applications = (0..2000)
        .map(|i| format!("{i:04}{}", "a".repeat(1020)))
        .collect();
    assert!(connect(huge).await.is_err(), "a 2 MB hello is refused");
    // A host name that would forge a log line: refused with the reason.
    let forged = o1_tests::sim_settings(&relay, &pki, "web-1\nINFO forged line", &pki.token);
    let error = connect(forged).await.unwrap_err().to_string();
    assert!(error.contains("host name"), "{error}");
    assert!(
        !relay.log().contains("\nINFO forged line"),
        "{}",
        relay.log()
    );

    // An authenticated agent sends items of 300 applications: the host
    // keeps 256, the rest is refused and counted.
    let mut agent = o1_tests::SimAgent::connect(&relay, &pki, "many-apps")
        .await
        .unwrap();
    for chunk in 0..3 {
        let items = (chunk * 100..chunk * 100 + 100)
            .map(|i| o1_tests::log_item(&format!("app-{i:03}"), o1_common::Level::Info, "x"))
            .collect();
        agent.send(items).await.unwrap();
    }
    let hosts = get_json(&relay.url("/api/hosts")).await.unwrap();
    let host = hosts
        .as_array()
        .or_else(|| hosts["hosts"].as_array())
        .unwrap()
        .iter()
        .find(|h| h["host"] == "many-apps")
        .cloned()
        .unwrap();
    let applications = host["applications"].as_array().unwrap().len();
    assert_eq!(applications, 256, "{host}");
    assert!(metric(&relay, "o1_ingest_errors_total").await >= 300.0 - 254.0);
}
