//! The dashboard in a real browser: Debian's Chromium, driven by
//! `tests/browser/dashboard.mjs` (playwright-core), against the real relay
//! and a real agent tailing a real file. The script asks for the relay to
//! be killed (`KILL`) and carries on when it is back.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use o1_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_fleet_logs_and_a_deployment_live_and_survives_a_relay_crash() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let agent_dir = dir.path().join("agent");
    let agent = Agent::start_listed(
        &agent_dir,
        &pki,
        &relay,
        "web-01",
        &format!(
            "[metrics]\ninterval_ms = 500\n\n[[application]]\nname = \"app\"\nlogs = [\"{}\"]\n",
            log.display()
        ),
    )
    .await
    .unwrap();
    // A second relay that wants a reader token.
    let reader = Token::create("reader", &[], "browser").unwrap();
    let guarded = Relay::start(
        &dir.path().join("guarded"),
        &pki,
        &format!("[auth]\nbrowsers = \"token\"\n\n{}", reader.toml),
    )
    .unwrap();
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` first (.ci/run does)"
    );
    let shots = std::env::var("O1_SHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("shots"));
    let mut node = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .current_dir(&browser)
        .env("O1_URL", format!("http://{}", relay.http))
        .env("O1_HOST", "web-01")
        .env("O1_LOG", &log)
        .env("O1_AGENT_BIN", binary("o1-agent"))
        .env("O1_AGENT_CONFIG", &agent.config)
        .env("O1_SHOTS", &shots)
        .env("O1_TOKEN_URL", format!("http://{}", guarded.http))
        .env("O1_READER_TOKEN", &reader.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let stdout = BufReader::new(node.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in stdout.lines().map_while(Result::ok) {
        eprintln!("browser: {line}");
        if line == "KILL" {
            tokio::task::block_in_place(|| relay.kill_and_restart()).unwrap();
            wait_for_host(&relay, "web-01").await.unwrap();
            let _ = writeln!(stdin, "restarted");
        }
        seen.push(line);
    }
    let output = node.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && seen.last().map(String::as_str) == Some("OK"),
        "the browser test failed: {stderr}\nsaw: {seen:#?}"
    );
    for shot in [
        "fleet",
        "host",
        "logs",
        "reconnecting",
        "deployments",
        "deployment",
        "fleet-narrow-dark",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png");
    }
}
