//! Agents push to the relay over QUIC (issue: uplink).

use std::time::{Duration, Instant};

use o1_common::Level;
use o1_tests::{
    Agent, Pki, Relay, SimAgent, WsClient, append_numbered, get_json, line_number, log_item,
    wait_for_host,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

fn agent_extra(log: &std::path::Path) -> String {
    format!(
        "[metrics]\ninterval_ms = 250\n\n[logs]\nstart_at = \"beginning\"\n\n[[application]]\nname = \"web\"\nlogs = [\"{}\"]\n",
        log.display()
    )
}

/// A relay (with `relay_extra`) and an agent for `web-01` tailing
/// `web.log`, listed by the relay.
struct WebHost {
    relay: Relay,
    log: std::path::PathBuf,
    agent: Agent,
    // Dropped last: the files of all of the above.
    _dir: tempfile::TempDir,
}

impl WebHost {
    async fn start(relay_extra: &str) -> WebHost {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        let relay = Relay::start(&dir.path().join("relay"), &pki, relay_extra).unwrap();
        let log = dir.path().join("web.log");
        std::fs::write(&log, "").unwrap();
        let agent_dir = dir.path().join("agent");
        let agent = Agent::start_listed(&agent_dir, &pki, &relay, "web-01", &agent_extra(&log))
            .await
            .unwrap();
        WebHost {
            relay,
            log,
            agent,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn metrics_and_every_appended_line_reach_a_websocket_subscriber_in_order() {
    let web = WebHost::start("").await;
    let (relay, log) = (&web.relay, &web.log);

    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs", "host": "web-01", "application": "web"}))
        .await
        .unwrap();
    let mut metrics = WsClient::connect(&relay.ws_url()).await.unwrap();
    metrics
        .subscribe(json!({"type": "subscribe-metrics", "host": "web-01", "metrics": ["cpu", "memory", "disk", "network"]}))
        .await
        .unwrap();
    append_numbered(log, 0, 500).unwrap();
    let mut got = Vec::new();
    while got.len() < 500 {
        let message = client.recv_json(T).await.unwrap();
        assert_eq!(message["type"], "log");
        assert_eq!(message["host"], "web-01");
        assert_eq!(message["application"], "web");
        got.push(line_number(&message).unwrap());
    }
    assert_eq!(got, (0..500).collect::<Vec<_>>());

    let sample = metrics
        .recv_until(T, |m| {
            m["type"] == "metrics" && m["application"] == "system"
        })
        .await
        .unwrap();
    let sample = sample.last().unwrap();
    assert_eq!(sample["host"], "web-01");
    for field in ["cpu", "memory", "disk"] {
        assert!(sample[field].is_number(), "{field} in {sample}");
    }
    assert!(
        sample["network"]["rxBytesPerSecond"].is_number(),
        "{sample}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_sigkill_and_restart_loses_no_line() {
    let history = "[history]\nlines_per_source = 10000\nbytes_per_source = 16777216\n";
    let mut web = WebHost::start(history).await;
    let log = web.log.clone();
    let relay = &mut web.relay;
    let mut before = WsClient::connect(&relay.ws_url()).await.unwrap();
    before
        .send_json(json!({"type": "subscribe-logs", "host": "web-01"}))
        .await
        .unwrap();
    let epoch = before.recv_json(T).await.unwrap()["epoch"].clone();
    let mut last_offset = Value::Null;

    // A writer appends numbered lines throughout.
    let total = 3000u64;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for n in 0..total {
                append_numbered(&log, n, n + 1).unwrap();
                std::thread::sleep(Duration::from_micros(700));
            }
        })
    };
    let mut seen_before = Vec::new();
    while seen_before.len() < 800 {
        let message = before.recv_json(T).await.unwrap();
        seen_before.push(line_number(&message).unwrap());
        last_offset = message["offset"].clone();
    }
    tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();
    // What the old process delivered before it died.
    while let Ok(message) = before.recv_json(Duration::from_millis(200)).await {
        if let Some(n) = line_number(&message) {
            seen_before.push(n);
            last_offset = message["offset"].clone();
        }
    }
    wait_for_host(relay, "web-01").await.unwrap();
    writer.join().unwrap();
    let mut after = WsClient::connect(&relay.ws_url()).await.unwrap();
    // Resumed where the first relay's delivery stopped.
    after
        .subscribe(json!({"type": "subscribe-logs", "host": "web-01",
                          "since": {"offset": last_offset, "epoch": epoch}}))
        .await
        .unwrap();
    let mut seen_after = Vec::new();
    while seen_after.last() != Some(&(total - 1)) {
        let message = after.recv_json(T).await.unwrap();
        seen_after.push(line_number(&message).unwrap());
    }
    let expected_before: Vec<u64> = (0..seen_before.len() as u64).collect();
    assert_eq!(
        seen_before, expected_before,
        "the first relay delivered a gapless prefix"
    );
    let first_after = seen_after[0];
    assert!(
        seen_after.windows(2).all(|w| w[1] == w[0] + 1),
        "the restarted relay delivers a gapless, repeat-free run"
    );
    let last_before = *seen_before.last().unwrap();
    // Lines the old relay recorded but whose ack the kill swallowed are
    // sent again by the agent, and dropped by the restarted relay (its
    // high-water marks come back from the history log): no gap, no repeat.
    assert_eq!(
        first_after,
        last_before + 1,
        "exactly once across the restart: {last_before} then {first_after}"
    );
    // The restarted relay keeps its stateless-reset and connection-id keys
    // (derived from its private key), so it answers the agent's packets for
    // the old connection with a reset the agent recognises, instead of the
    // agent waiting out its idle timeout.
    let agent_log = web.agent.log();
    assert!(
        agent_log.contains("connection lost: reset by peer"),
        "the agent saw a reset, not a timeout:\n{agent_log}"
    );
}

#[tokio::test]
async fn a_bad_token_is_refused_with_a_reason_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let agent_dir = dir.path().join("agent");
    let agent = Agent::start(&agent_dir, &pki, &relay, "intruder", "").unwrap();
    let config = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace(&pki.token, "not-the-token");
    drop(agent);
    std::fs::write(agent_dir.join("agent.toml"), config).unwrap();
    let agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    let log = o1_tests::eventually(T, || async {
        let log = agent.log();
        log.contains("refused").then_some(log)
    })
    .await
    .unwrap();
    assert!(log.contains("invalid token"), "{log}");
    let hosts = get_json(&relay.url("/api/hosts")).await.unwrap();
    assert_eq!(
        hosts["hosts"],
        json!([]),
        "a refused agent is not in the inventory"
    );
    let metrics = o1_tests::metrics_text(&relay).await.unwrap();
    assert!(
        !metrics.contains("o1_uplink_auth_failures_total 0\n"),
        "{metrics}"
    );
    assert!(relay.log().contains("agent refused"));
}

#[tokio::test]
async fn two_agents_appear_in_the_inventory_and_a_vanished_one_is_marked_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[uplink]\nidle_timeout_secs = 2\n",
    )
    .unwrap();
    let _a = Agent::start(&dir.path().join("a"), &pki, &relay, "host-a", "").unwrap();
    let mut b = Agent::start(&dir.path().join("b"), &pki, &relay, "host-b", "").unwrap();
    wait_for_host(&relay, "host-a").await.unwrap();
    let entry = wait_for_host(&relay, "host-b").await.unwrap();
    assert_eq!(entry["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(entry["lastSeen"].as_str().unwrap().ends_with('Z'));
    assert!(
        entry["applications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "system")
    );
    b.kill();
    let started = Instant::now();
    let url = relay.url("/api/hosts");
    o1_tests::eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let hosts = get_json(&url).await.ok()?;
            let b = hosts["hosts"]
                .as_array()?
                .iter()
                .find(|h| h["host"] == "host-b")?
                .clone();
            (b["connected"] == false).then_some(())
        }
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "noticed within seconds"
    );
    let hosts = get_json(&url).await.unwrap();
    let a = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "host-a")
        .unwrap()
        .clone();
    assert_eq!(a["connected"], true);
}

#[tokio::test]
async fn duplicate_batches_are_dropped_by_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "h").await.unwrap();
    agent
        .send_with_sequence(1, vec![log_item("app", Level::Info, "line 00000001 once")])
        .await
        .unwrap();
    agent
        .send_with_sequence(1, vec![log_item("app", Level::Info, "line 00000001 once")])
        .await
        .unwrap();
    agent
        .send_with_sequence(2, vec![log_item("app", Level::Info, "line 00000002 next")])
        .await
        .unwrap();
    let first = client.recv_json(T).await.unwrap();
    let second = client.recv_json(T).await.unwrap();
    assert_eq!(
        (line_number(&first), line_number(&second)),
        (Some(1), Some(2))
    );
    let metrics = o1_tests::metrics_text(&relay).await.unwrap();
    assert!(
        metrics.contains("o1_ingest_duplicate_batches_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn garbage_wrong_alpn_and_bad_frames_are_closed_counted_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[uplink]\nmax_frame_bytes = 65536\n",
    )
    .unwrap();

    // Raw garbage datagrams.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let _ = socket.send_to(&[i as u8; 1200], relay.uplink);
    }

    // A QUIC client with the wrong ALPN.
    let settings = o1_tests::sim_settings(&relay, &pki, "h", &pki.token);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(pki.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let wrong_alpn = endpoint.connect(relay.uplink, "localhost").unwrap().await;
    assert!(wrong_alpn.is_err(), "wrong ALPN must not connect");

    // Right ALPN, then frames that break the protocol: bad magic, oversized,
    // undecodable body.
    let good_endpoint = o1_agent::uplink::endpoint(&settings).unwrap();
    for bad in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (1u32 << 30).to_be_bytes().to_vec(),
        vec![0, 0, 0, 5, b'o', b'1', 1, 0xff, 0xff],
    ] {
        let connection = good_endpoint
            .connect(relay.uplink, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        let reason = tokio::time::timeout(T, connection.closed()).await.unwrap();
        let text = reason.to_string();
        assert!(text.contains("closed by peer"), "{text}");
    }

    // Everyone else is still served.
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-logs"}))
        .await
        .unwrap();
    let mut agent = SimAgent::connect(&relay, &pki, "fine").await.unwrap();
    agent
        .send(vec![log_item("app", Level::Info, "still here")])
        .await
        .unwrap();
    assert_eq!(client.recv_json(T).await.unwrap()["message"], "still here");

    let metrics = o1_tests::metrics_text(&relay).await.unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    assert!(
        value("o1_uplink_handshake_failures_total") >= 1,
        "{metrics}"
    );
    assert_eq!(value("o1_uplink_protocol_errors_total"), 3, "{metrics}");
    let log = relay.log();
    assert_eq!(
        log.matches("uplink connection closed for a protocol error")
            .count(),
        1,
        "logged once, not once per failure:\n{log}"
    );
}
