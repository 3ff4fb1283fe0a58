//! Deployments followed live, as the seed's Deployment Dashboard does
//! (issue: deployments).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use o1_tests::{Agent, Pki, Relay, WsClient, binary};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// The seed page's `DeploymentMonitor.handleMessage`, ported.
#[derive(Debug, Default)]
struct Dashboard {
    progress: Vec<u64>,
    statuses: Vec<String>,
    logs: Vec<(String, String)>,
    finals: Vec<(String, String)>,
}

impl Dashboard {
    fn handle_message(&mut self, data: &Value) {
        match data["type"].as_str() {
            Some("deployment") => {
                self.progress
                    .push(data["progress"].as_u64().expect("progress is an integer"));
                self.statuses
                    .push(data["status"].as_str().unwrap().to_owned());
            }
            Some("log") => self.logs.push((
                data["level"].as_str().unwrap().to_owned(),
                data["message"].as_str().unwrap().to_owned(),
            )),
            Some("status") => self.finals.push((
                data["status"].as_str().unwrap().to_owned(),
                data["message"].as_str().unwrap().to_owned(),
            )),
            _ => {}
        }
    }

    /// Feeds messages until the final status, then a little longer to
    /// catch anything after it.
    async fn follow(&mut self, client: &mut WsClient) {
        loop {
            let message = client.recv_json(T).await.unwrap();
            self.handle_message(&message);
            if message["type"] == "status" {
                break;
            }
        }
        while let Ok(message) = client.recv_json(Duration::from_millis(500)).await {
            self.handle_message(&message);
        }
    }
}

struct Env {
    dir: tempfile::TempDir,
    pki: Pki,
    relay: Relay,
    config: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let config =
        Agent::write_config(&dir.path().join("agent"), &pki, &relay, "deploy-host", "").unwrap();
    Env {
        dir,
        pki,
        relay,
        config,
    }
}

fn script(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("step.sh");
    std::fs::write(&path, body).unwrap();
    path
}

fn deploy(config: &Path, id: &str, script: &Path) -> std::process::Child {
    Command::new(binary("o1-agent"))
        .arg("--config")
        .arg(config)
        .args(["deploy", "--id", id, "--app", "web", "--", "sh"])
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn create(relay: &Relay, token: &str, id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(relay.url("/api/deployments"))
        .bearer_auth(token)
        .json(&json!({"deploymentId": id, "application": "web", "hosts": ["deploy-host"]}))
        .send()
        .await
        .unwrap()
}

const GOOD_SCRIPT: &str = "echo '::progress 10 Installing dependencies...'\necho 'step one'\nsleep 0.2\necho '::progress 50 Building'\necho 'step two'\necho 'warning: cache cold' >&2\nsleep 0.2\necho '::progress 90 Finishing'\necho 'step three'\n";

#[tokio::test]
async fn a_browser_follows_a_deployment_from_start_to_completion() {
    let e = env();
    let id = "deploy-20240115-103000";
    assert_eq!(create(&e.relay, &e.pki.token, id).await.status(), 201);
    let mut client = WsClient::connect(&e.relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe", "deploymentId": id}))
        .await
        .unwrap();
    let mut dashboard = Dashboard::default();
    let first = client.recv_json(T).await.unwrap();
    assert_eq!(first["type"], "deployment", "current state first: {first}");
    assert_eq!(first["status"], "pending");
    dashboard.handle_message(&first);

    let mut child = deploy(&e.config, id, &script(e.dir.path(), GOOD_SCRIPT));
    dashboard.follow(&mut client).await;
    let status = child.wait().unwrap();
    assert!(status.success());

    assert!(
        dashboard.progress.windows(2).all(|w| w[0] <= w[1]),
        "progress rises: {:?}",
        dashboard.progress
    );
    for step in [10, 50, 90, 100] {
        assert!(
            dashboard.progress.contains(&step),
            "{step} in {:?}",
            dashboard.progress
        );
    }
    assert_eq!(
        dashboard.statuses.last().map(String::as_str),
        Some("completed")
    );
    let stdout: Vec<&str> = dashboard
        .logs
        .iter()
        .map(|(_, m)| m.as_str())
        .filter(|m| m.starts_with("step"))
        .collect();
    assert_eq!(
        stdout,
        ["step one", "step two", "step three"],
        "script lines in order"
    );
    assert!(
        dashboard
            .logs
            .iter()
            .any(|(level, m)| m == "warning: cache cold" && level == "WARNING")
    );
    assert!(
        !dashboard
            .logs
            .iter()
            .any(|(_, m)| m.starts_with("::progress")),
        "progress lines are not logged"
    );
    assert_eq!(
        dashboard.finals,
        [(
            "completed".to_owned(),
            "Deployment completed successfully".to_owned()
        )],
        "exactly one final status"
    );

    // A late subscriber gets the replayed state and the final status.
    let mut late = WsClient::connect(&e.relay.ws_url()).await.unwrap();
    late.subscribe(json!({"type": "subscribe", "deploymentId": id}))
        .await
        .unwrap();
    let mut replay = Dashboard::default();
    replay.follow(&mut late).await;
    assert_eq!(replay.progress, [100]);
    assert_eq!(replay.statuses, ["completed"]);
    assert_eq!(
        replay.logs.len(),
        dashboard.logs.len(),
        "recent log lines replayed"
    );
    assert_eq!(replay.finals, dashboard.finals);

    // And REST knows it.
    let one: Value = reqwest::get(e.relay.url(&format!("/api/deployments/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["status"], "completed");
    assert_eq!(one["progress"], 100);
    assert!(one["endedAt"].as_str().is_some());
    let list: Value = reqwest::get(e.relay.url("/api/deployments"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["deployments"][0]["deploymentId"], id);
}

#[tokio::test]
async fn a_failing_step_reports_failed_and_exits_with_its_code() {
    let e = env();
    let id = "deploy-fails";
    // Created by the agent's first event, no REST call needed.
    let mut child = deploy(
        &e.config,
        id,
        &script(
            e.dir.path(),
            "echo 'starting'\necho 'ERROR: migration failed' >&2\nexit 3\n",
        ),
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    let mut late = WsClient::connect(&e.relay.ws_url()).await.unwrap();
    late.subscribe(json!({"type": "subscribe", "deploymentId": id}))
        .await
        .unwrap();
    let mut dashboard = Dashboard::default();
    dashboard.follow(&mut late).await;
    assert_eq!(dashboard.finals.len(), 1);
    assert_eq!(dashboard.finals[0].0, "failed");
    assert!(
        dashboard.finals[0].1.contains("code 3"),
        "{:?}",
        dashboard.finals
    );
    assert!(
        dashboard
            .logs
            .iter()
            .any(|(level, m)| level == "ERROR" && m.contains("migration failed"))
    );
}

#[tokio::test]
async fn sigterm_cancels_the_step_and_reports_cancelled() {
    let e = env();
    let id = "deploy-cancelled";
    assert_eq!(create(&e.relay, &e.pki.token, id).await.status(), 201);
    let mut client = WsClient::connect(&e.relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe", "deploymentId": id}))
        .await
        .unwrap();
    let mut child = deploy(
        &e.config,
        id,
        &script(e.dir.path(), "echo '::progress 5 waiting'\nsleep 30\n"),
    );
    // Wait until it runs.
    client.recv_until(T, |m| m["progress"] == 5).await.unwrap();
    o1_tests::signal(child.id(), rustix::process::Signal::TERM);
    let mut dashboard = Dashboard::default();
    dashboard.follow(&mut client).await;
    assert_eq!(
        dashboard.finals,
        [("cancelled".to_owned(), "Deployment cancelled".to_owned())]
    );
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[tokio::test]
async fn rest_publishing_refuses_bad_tokens_and_invalid_transitions() {
    let e = env();
    let client = reqwest::Client::new();
    let events = |id: &str| e.relay.url(&format!("/api/deployments/{id}/events"));
    // Bad or missing token.
    let response = create(&e.relay, "wrong", "d1").await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let response = client
        .post(e.relay.url("/api/deployments"))
        .json(&json!({"application": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // A generated id in the seed's form.
    let response = client
        .post(e.relay.url("/api/deployments"))
        .bearer_auth(&e.pki.token)
        .json(&json!({"application": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["deploymentId"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("deploy-") && id.len() >= "deploy-YYYYMMDD-HHMMSS".len(),
        "{id}"
    );

    let post = |body: Value| {
        client
            .post(events(&id))
            .bearer_auth(&e.pki.token)
            .json(&body)
            .send()
    };
    assert_eq!(post(json!({"progress": 150})).await.unwrap().status(), 422);
    assert_eq!(
        post(json!({"progress": "half"})).await.unwrap().status(),
        400
    );
    assert_eq!(
        post(json!({"status": "exploded"})).await.unwrap().status(),
        400
    );
    let ok = post(json!({"status": "running", "progress": 40, "message": "Halfway", "logs": [{"level": "INFO", "message": "hello"}]}))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        post(json!({"status": "completed"})).await.unwrap().status(),
        200
    );
    let late = post(json!({"progress": 50})).await.unwrap();
    assert_eq!(late.status(), 409, "no progress after completed");
    let body: Value = late.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("ended"));
    let unknown = client
        .post(events("nope"))
        .bearer_auth(&e.pki.token)
        .json(&json!({"progress": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let wrong_token = client
        .post(events(&id))
        .bearer_auth("x")
        .json(&json!({"progress": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), 401);
}
