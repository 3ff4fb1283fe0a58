//! The seed page's JavaScript, run unchanged in a real client (Node's
//! WebSocket, the browser API) against the real relay: with
//! `auth.browsers = "open"` over `ws://`, and with only the URL changed to
//! `wss://` against the relay's own TLS listener, trusting the relay's CA.
//! The code is cut from `docs/websocket-api-reference.txt` (the seed page)
//! at run time, so an edit there is tested here.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use o1_common::Level;
use o1_common::api::DeploymentStatus;
use o1_common::wire::{DeploymentEvent, Item, LogRecord};
use o1_tests::*;

const DEPLOYMENT: &str = "deploy-20240115-103000";

/// The page's code between two markers.
fn seed_block(start: &str, end: Option<&str>) -> String {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/websocket-api-reference.txt"),
    )
    .unwrap();
    let from = page.find(start).expect("start marker");
    let rest = &page[from..];
    let to = end.map_or(rest.len(), |end| rest.find(end).expect("end marker"));
    rest[..to].to_owned()
}

/// The seed's three examples with `url` in place of
/// `ws://localhost:3000/api/websocket`, and a harness that prints what
/// their hooks receive as JSON lines.
fn script(url: &str) -> String {
    let connect = seed_block("const ws = new WebSocket(", Some("Message Types"));
    let monitor = seed_block("class DeploymentMonitor {", Some("Live Metrics Display"));
    let metrics = seed_block("class MetricsDisplay {", Some("For detailed schema"));
    let code = [connect, monitor, metrics]
        .join("\n")
        .replace("ws://localhost:3000/api/websocket", url);
    format!(
        r#"{code}
// ---- harness (not from the page) ----
const out = (o) => console.log('OUT ' + JSON.stringify(o));
const seen = new Set();
const finish = (what) => {{ seen.add(what); if (seen.has('final') && seen.has('cpu')) process.exit(0); }};
globalThis.document = {{ getElementById: (id) => ({{ set textContent(v) {{ out({{ element: id, text: v }}); if (id === 'cpu-usage') finish('cpu'); }} }}) }};
class Monitor extends DeploymentMonitor {{
  updateProgress(p) {{ out({{ progress: p }}); }}
  updateStatus(s, m) {{ out({{ status: s, message: m }}); }}
  addLog(level, message) {{ out({{ log: message, level }}); }}
  finalizeDeployment(s, m) {{ out({{ final: s, message: m }}); finish('final'); }}
}}
new Monitor('{DEPLOYMENT}');
new MetricsDisplay('test-anvil-01', 'Anvil');
setTimeout(() => {{ out({{ timeout: true }}); process.exit(3); }}, 20000);
"#
    )
}

/// Runs the seed's code against `url`; returns its `OUT` lines as they
/// come, on a channel.
fn run_node(
    dir: &Path,
    url: &str,
    ca: Option<&Path>,
) -> (std::process::Child, mpsc::Receiver<String>) {
    let path = dir.join("seed.js");
    std::fs::write(&path, script(url)).unwrap();
    let mut command = Command::new("node");
    // Node 20 has the browser's WebSocket behind this flag (on by default
    // from Node 22, where the flag is accepted and does nothing).
    command
        .arg("--experimental-websocket")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(ca) = ca {
        command.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let mut child = command.spawn().expect("node (apt-get install nodejs)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no `{needle}` from the seed's code; saw {seen:#?}"),
        }
    }
}

fn event(status: DeploymentStatus, progress: u8, message: &str) -> Item {
    Item::Deployment(DeploymentEvent {
        deployment_id: DEPLOYMENT.into(),
        application: "Anvil".into(),
        status,
        progress: Some(progress),
        message: message.into(),
        timestamp_ms: o1_common::Timestamp::now().unix_millis,
    })
}

/// The seed's flow: a deployment followed live to its end, a host's
/// metrics rendered, the connection example's messages logged.
async fn seed_flow(relay: &Relay, pki: &Pki, url: &str, ca: Option<&Path>, dir: &Path) {
    let mut agent = SimAgent::connect(relay, pki, "test-anvil-01")
        .await
        .unwrap();
    agent
        .send(vec![
            event(DeploymentStatus::Pending, 0, "Queued"),
            metric_item("Anvil", 45.2),
        ])
        .await
        .unwrap();
    let (mut node, rx) = run_node(dir, url, ca);
    let mut seen = Vec::new();
    // Subscribed: the deployment's current state is replayed first.
    wait_line(&rx, &mut seen, r#""status":"pending""#);
    wait_line(&rx, &mut seen, r#""element":"cpu-usage","text":"45.2%""#);
    // Live from here.
    agent
        .send(vec![
            event(DeploymentStatus::Running, 45, "Installing dependencies..."),
            Item::Log(LogRecord {
                application: "Anvil".into(),
                timestamp_ms: o1_common::Timestamp::now().unix_millis,
                level: Level::Info,
                message: "Application started successfully".into(),
                deployment_id: Some(DEPLOYMENT.into()),
            }),
        ])
        .await
        .unwrap();
    wait_line(&rx, &mut seen, r#""progress":45"#);
    wait_line(
        &rx,
        &mut seen,
        r#""log":"Application started successfully","level":"INFO""#,
    );
    agent
        .send(vec![event(DeploymentStatus::Completed, 100, "")])
        .await
        .unwrap();
    wait_line(
        &rx,
        &mut seen,
        r#""final":"completed","message":"Deployment completed successfully""#,
    );
    let status = node.wait().unwrap();
    assert!(status.success(), "node exited with {status}; saw {seen:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_pages_javascript_runs_unchanged_against_an_open_relay() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    seed_flow(&relay, &pki, &relay.ws_url(), None, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_pages_javascript_runs_over_wss_with_only_the_url_changed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        &format!(
            "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.dir.join("relay.crt").display(),
            pki.dir.join("relay.key").display()
        ),
    )
    .unwrap();
    let url = format!("wss://localhost:{}/api/websocket", relay.http.port());
    seed_flow(&relay, &pki, &url, Some(&pki.ca()), dir.path()).await;
    // The same port speaks only TLS: a plain WebSocket gets no upgrade.
    assert!(WsClient::connect(&relay.ws_url()).await.is_err());

    // A renewed certificate (same CA, as certbot renews) is read on
    // SIGHUP without a restart, and the listener keeps serving with it.
    let before = std::fs::read(pki.dir.join("relay.crt")).unwrap();
    Pki::create(dir.path()).unwrap();
    assert_ne!(std::fs::read(pki.dir.join("relay.crt")).unwrap(), before);
    signal(relay.pid(), rustix::process::Signal::HUP);
    eventually(Duration::from_secs(10), || {
        let log = relay.log();
        async move { log.contains("HTTPS certificate reloaded").then_some(()) }
    })
    .await
    .unwrap();
    let (mut node, rx) = run_node(dir.path(), &url, Some(&pki.ca()));
    let mut seen = Vec::new();
    wait_line(&rx, &mut seen, r#""final":"completed""#);
    let _ = node.kill();
}
