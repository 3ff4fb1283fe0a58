//! The first-run experience: `o1` (`cargo run --release`) (issue: packaging and first run).

use std::process::{Command, Stdio};
use std::time::Duration;

use o1_tests::{WsClient, binary, eventually, get_json, read_first_line};
use serde_json::json;

#[tokio::test]
async fn the_demo_serves_health_hosts_metrics_and_log_lines_then_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("o1-data");
    let mut child = Command::new(binary("o1"))
        .arg("--dir")
        .arg(&data)
        .args([
            "--http",
            "127.0.0.1:0",
            "--uplink",
            "127.0.0.1:0",
            "--heartbeat-secs",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = read_first_line(child.stdout.take().unwrap(), Duration::from_secs(20)).unwrap();
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .to_owned();

    let health = get_json(&format!("http://{http}/api/websocket/health"))
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    let host = eventually(Duration::from_secs(15), || {
        let url = format!("http://{http}/api/hosts");
        async move {
            let hosts = get_json(&url).await.ok()?;
            let host = hosts["hosts"].as_array()?.first()?.clone();
            (host["connected"] == true).then_some(host)
        }
    })
    .await
    .unwrap();
    let host_name = host["host"].as_str().unwrap().to_owned();
    assert!(
        host["applications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "demo")
    );

    // The seed's Live Metrics Display subscription.
    let mut metrics = WsClient::connect(&format!("ws://{http}/api/websocket"))
        .await
        .unwrap();
    metrics
        .subscribe(json!({"type": "subscribe-metrics", "host": host_name, "application": "system", "metrics": ["cpu", "memory", "disk", "network"]}))
        .await
        .unwrap();
    let sample = metrics
        .recv_until(Duration::from_secs(10), |m| m["type"] == "metrics")
        .await
        .unwrap();
    assert!(sample.last().unwrap()["cpu"].is_number());

    let mut logs = WsClient::connect(&format!("ws://{http}/api/websocket"))
        .await
        .unwrap();
    logs.subscribe(json!({"type": "subscribe-logs", "host": host_name, "application": "demo"}))
        .await
        .unwrap();
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("demo.log"))
        .unwrap();
    file.write_all(b"ERROR something broke\n").unwrap();
    let seen = logs
        .recv_until(Duration::from_secs(10), |m| {
            m["message"] == "ERROR something broke"
        })
        .await
        .unwrap();
    assert_eq!(seen.last().unwrap()["level"], "ERROR");

    o1_tests::signal(child.id(), rustix::process::Signal::INT);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
