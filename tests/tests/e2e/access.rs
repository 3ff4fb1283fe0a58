//! Access control, tried from outside: each role against each surface
//! (WebSocket subscribe and replay, REST, uplink hello, deployment
//! publishing), a scoped reader that must never see another host's data
//! by any path, mutual TLS for agents, Origin and Host checks, and the
//! limit on failed authentications.

use std::time::Duration;

use o1_common::Level;
use o1_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// Tokens of every role, with scopes.
struct Tokens {
    agent_web: Token,
    publisher_web: Token,
    reader_web: Token,
    reader_all: Token,
}

impl Tokens {
    fn create() -> Tokens {
        Tokens {
            agent_web: Token::create("agent", &["web-*"], "web agents").unwrap(),
            publisher_web: Token::create("publisher", &["web-*"], "web ci").unwrap(),
            reader_web: Token::create("reader", &["web-*"], "alice").unwrap(),
            reader_all: Token::create("reader", &[], "bob").unwrap(),
        }
    }

    fn toml(&self) -> String {
        let mut text = String::from("[auth]\nbrowsers = \"token\"\n\n");
        for t in [
            &self.agent_web,
            &self.publisher_web,
            &self.reader_web,
            &self.reader_all,
        ] {
            text.push_str(&t.toml);
            text.push('\n');
        }
        text
    }
}

/// A relay in `browsers = "token"` mode with [`Tokens`]; the test
/// fixtures' own token (`pki.token`) is an admin.
fn start(dir: &std::path::Path, tokens: &Tokens, extra: &str) -> (Pki, Relay) {
    let pki = Pki::create(dir).unwrap();
    let config = merge_toml(&tokens.toml(), extra).unwrap();
    // Tables of the same name from two texts: the token array is written
    // whole here, then merged over the fixtures' base config.
    let relay = Relay::start(&dir.join("relay"), &pki, &config).unwrap();
    (pki, relay)
}

fn hosts_of(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| m["host"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_tokens_push_only_as_their_hosts_and_readers_cannot_push() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::create();
    let (pki, relay) = start(dir.path(), &tokens, "");
    let refused = |result: Result<SimAgent, o1_agent::uplink::UplinkError>| match result {
        Ok(_) => panic!("connected, expected a refusal"),
        Err(e) => e.to_string(),
    };
    // In scope: welcome.
    let mut web = SimAgent::connect_settings(&sim_settings(
        &relay,
        &pki,
        "web-01",
        &tokens.agent_web.token,
    ))
    .await
    .unwrap();
    web.send(vec![log_item("app", Level::Info, "from web")])
        .await
        .unwrap();
    // Out of scope: refused with a reason the agent can log.
    let reason = refused(
        SimAgent::connect_settings(&sim_settings(
            &relay,
            &pki,
            "db-01",
            &tokens.agent_web.token,
        ))
        .await,
    );
    assert!(
        reason.contains("may not report as host \"db-01\""),
        "{reason}"
    );
    // A reader cannot push; a wrong token is refused.
    let reason = refused(
        SimAgent::connect_settings(&sim_settings(
            &relay,
            &pki,
            "web-01",
            &tokens.reader_web.token,
        ))
        .await,
    );
    assert!(reason.contains("reader token cannot push"), "{reason}");
    let reason =
        refused(SimAgent::connect_settings(&sim_settings(&relay, &pki, "web-01", "nope")).await);
    assert!(reason.contains("invalid token"), "{reason}");
    let failures = metric_value_with(&relay, "o1_uplink_auth_failures_total", Some(&pki.token))
        .await
        .unwrap();
    assert!(failures >= 3.0, "{failures}");

    // The real agent with an out-of-scope host logs the refusal and is
    // never listed.
    let mut agent = Agent::start(
        &dir.path().join("agent"),
        &pki,
        &relay,
        "db-07",
        &format!("[relay]\ntoken = \"{}\"\n", tokens.agent_web.token),
    )
    .unwrap();
    eventually(WAIT, || {
        let log = agent.log();
        async move { log.contains("may not report as host").then_some(()) }
    })
    .await
    .unwrap();
    let (_, hosts) = get_with(&relay.url("/api/hosts"), Some(&pki.token))
        .await
        .unwrap();
    assert!(!hosts.contains("db-07"), "{hosts}");
    agent.kill();

    // A publisher on the uplink (`o1-agent deploy` with a publisher
    // token): deployment items only; its plain lines and metrics are
    // refused and counted.
    let mut watcher = WsClient::connect_with_headers(
        &relay.ws_url(),
        &[("authorization", &format!("Bearer {}", pki.token))],
    )
    .await
    .unwrap();
    watcher
        .subscribe(json!({"type": "subscribe-logs", "host": "web-02"}))
        .await
        .unwrap();
    let mut publisher = SimAgent::connect_settings(&sim_settings(
        &relay,
        &pki,
        "web-02",
        &tokens.publisher_web.token,
    ))
    .await
    .unwrap();
    let mut deploy_line = log_item("app", Level::Info, "deploy output");
    if let o1_common::wire::Item::Log(record) = &mut deploy_line {
        record.deployment_id = Some("pub-1".into());
    }
    publisher
        .send(vec![
            log_item("app", Level::Info, "plain line from a publisher"),
            metric_item("app", 5.0),
            o1_common::wire::Item::Deployment(o1_common::wire::DeploymentEvent {
                deployment_id: "pub-1".into(),
                application: "app".into(),
                status: o1_common::api::DeploymentStatus::Running,
                progress: Some(10),
                message: "started".into(),
                timestamp_ms: o1_common::Timestamp::now().unix_millis,
            }),
            deploy_line,
        ])
        .await
        .unwrap();
    let seen = watcher
        .recv_until(WAIT, |m| m["message"] == "deploy output")
        .await
        .unwrap();
    assert!(
        seen.iter()
            .all(|m| m["message"] != "plain line from a publisher"),
        "{seen:?}"
    );
    let (status, body) = get_with(&relay.url("/api/deployments/pub-1"), Some(&pki.token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"hosts\":[\"web-02\"]"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_reader_never_sees_another_hosts_data_by_any_path() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::create();
    let (pki, relay) = start(dir.path(), &tokens, "");
    let mut web = SimAgent::connect(&relay, &pki, "web-01").await.unwrap();
    let mut db = SimAgent::connect(&relay, &pki, "db-01").await.unwrap();
    // History before any subscription, and a latest metric each.
    for i in 0..5 {
        db.send(vec![log_item(
            "app",
            Level::Error,
            &format!("db secret {i}"),
        )])
        .await
        .unwrap();
        web.send(vec![log_item(
            "app",
            Level::Error,
            &format!("web line {i}"),
        )])
        .await
        .unwrap();
    }
    db.send(vec![metric_item("app", 91.0)]).await.unwrap();
    web.send(vec![metric_item("app", 19.0)]).await.unwrap();
    for (id, hosts) in [
        ("d-web", json!(["web-01"])),
        ("d-db", json!(["db-01"])),
        ("d-fleet", json!([])),
    ] {
        let (status, body) = post_with(
            &relay.url("/api/deployments"),
            Some(&pki.token),
            json!({"deploymentId": id, "application": "app", "hosts": hosts}),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{body}");
    }

    // WebSocket: nothing before authenticating.
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    ws.send_json(json!({"type": "subscribe-logs", "requestId": "early"}))
        .await
        .unwrap();
    let early = ws.recv_json(WAIT).await.unwrap();
    assert_eq!(
        (early["code"].as_str(), early["requestId"].as_str()),
        (Some("unauthorized"), Some("early")),
        "{early}"
    );
    let answer = ws.authenticate(&tokens.reader_web.token).await.unwrap();
    assert_eq!(answer["type"], "authenticated", "{answer}");
    assert_eq!(answer["role"], "reader");
    assert_eq!(answer["hosts"], json!(["web-*"]));
    assert_eq!(answer["requestId"], "auth");

    // A named host outside the scope: unauthorized, never silently empty.
    for request in [
        json!({"type": "subscribe-logs", "host": "db-01", "requestId": 1}),
        json!({"type": "subscribe-metrics", "host": "db-01", "requestId": 1}),
        json!({"type": "subscribe", "deploymentId": "d-db", "requestId": 1}),
        json!({"type": "subscribe", "deploymentId": "d-fleet", "requestId": 1}),
    ] {
        ws.send_json(request.clone()).await.unwrap();
        let reply = ws.recv_json(WAIT).await.unwrap();
        assert_eq!(reply["code"], "unauthorized", "{request} → {reply}");
        assert_eq!(reply["requestId"], 1);
    }
    // Wildcards: replay (tail), latest metrics and live data of the
    // scope's hosts only.
    ws.send_json(json!({"type": "subscribe-logs", "tail": 100}))
        .await
        .unwrap();
    let replay = ws
        .recv_until(WAIT, |m| m["message"] == "web line 4")
        .await
        .unwrap();
    assert_eq!(hosts_of(&replay).len(), 5, "{replay:?}");
    ws.send_json(json!({"type": "subscribe-logs", "application": "app"}))
        .await
        .unwrap();
    ws.recv_until(WAIT, |m| m["type"] == "subscribed")
        .await
        .unwrap();
    ws.send_json(json!({"type": "subscribe-metrics"}))
        .await
        .unwrap();
    let metrics = ws
        .recv_until(WAIT, |m| m["type"] == "metrics")
        .await
        .unwrap();
    ws.subscribe(json!({"type": "subscribe", "deploymentId": "d-web"}))
        .await
        .unwrap();
    // Live: db first, then a web marker (twice: both log subscriptions).
    db.send(vec![
        log_item("app", Level::Error, "db secret live"),
        metric_item("app", 92.0),
    ])
    .await
    .unwrap();
    web.send(vec![log_item("app", Level::Error, "web marker")])
        .await
        .unwrap();
    let mut live = ws
        .recv_until(WAIT, |m| m["message"] == "web marker")
        .await
        .unwrap();
    live.extend(
        ws.recv_until(WAIT, |m| m["message"] == "web marker")
            .await
            .unwrap(),
    );
    web.send(vec![metric_item("app", 20.0)]).await.unwrap();
    live.extend(ws.recv_until(WAIT, |m| m["cpu"] == 20.0).await.unwrap());
    let all: Vec<Value> = replay.into_iter().chain(metrics).chain(live).collect();
    let hosts = hosts_of(&all);
    assert!(!hosts.is_empty());
    assert!(
        hosts.iter().all(|h| h == "web-01"),
        "another host's data reached a scoped reader: {all:?}"
    );
    assert!(all.iter().all(|m| !m.to_string().contains("db secret")));

    // The same reader over REST.
    let reader = Some(tokens.reader_web.token.as_str());
    let (status, body) = get_with(&relay.url("/api/hosts"), reader).await.unwrap();
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = listed["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["host"].as_str())
        .collect();
    assert_eq!(names, ["web-01"]);
    let (_, body) = get_with(&relay.url("/api/deployments"), reader)
        .await
        .unwrap();
    let page: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = page["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["deploymentId"].as_str())
        .collect();
    assert_eq!(ids, ["d-web"]);
    for (path, expected) in [
        ("/api/deployments/d-web", 200),
        ("/api/deployments/d-db", 403),
        ("/api/deployments/d-fleet", 403),
        ("/api/websocket/stats", 200),
        ("/api/websocket/metrics", 200),
        ("/metrics", 200),
    ] {
        let (status, body) = get_with(&relay.url(path), reader).await.unwrap();
        assert_eq!(status, expected, "{path}: {body}");
    }
    // An unscoped reader sees both hosts and every deployment.
    let (_, body) = get_with(
        &relay.url("/api/deployments"),
        Some(&tokens.reader_all.token),
    )
    .await
    .unwrap();
    assert!(body.contains("d-db") && body.contains("d-fleet"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_is_allowed_or_refused_on_each_surface() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::create();
    let (pki, relay) = start(dir.path(), &tokens, "");
    let admin = pki.token.as_str();
    let reads = [
        "/api/hosts",
        "/api/deployments",
        "/api/websocket/stats",
        "/api/websocket/metrics",
        "/metrics",
    ];
    // (who, token, may read)
    let table: &[(&str, Option<&str>, u16)] = &[
        ("nobody", None, 401),
        ("a wrong token", Some("wrong"), 401),
        ("agent", Some(&tokens.agent_web.token), 403),
        ("publisher", Some(&tokens.publisher_web.token), 403),
        ("reader", Some(&tokens.reader_web.token), 200),
        ("admin", Some(admin), 200),
    ];
    for (who, token, expected) in table {
        for path in reads {
            let (status, body) = get_with(&relay.url(path), *token).await.unwrap();
            assert_eq!(status, *expected, "{who} GET {path}: {body}");
        }
        // The health check is always open.
        let (status, _) = get_with(&relay.url("/api/websocket/health"), *token)
            .await
            .unwrap();
        assert_eq!(status, 200, "{who} health");
    }
    let (status, _) = get_with(&relay.url("/api/hosts"), None).await.unwrap();
    assert_eq!(status, 401);

    // Publishing: (who, token, hosts, expected status)
    let create =
        |id: &str, hosts: Value| json!({"deploymentId": id, "application": "app", "hosts": hosts});
    let table: &[(&str, Option<&str>, Value, u16)] = &[
        ("nobody", None, json!(["web-01"]), 401),
        (
            "reader",
            Some(&tokens.reader_web.token),
            json!(["web-01"]),
            403,
        ),
        (
            "agent",
            Some(&tokens.agent_web.token),
            json!(["web-01"]),
            403,
        ),
        (
            "publisher, other host",
            Some(&tokens.publisher_web.token),
            json!(["db-01"]),
            403,
        ),
        (
            "publisher, the fleet",
            Some(&tokens.publisher_web.token),
            json!([]),
            403,
        ),
        (
            "publisher",
            Some(&tokens.publisher_web.token),
            json!(["web-01", "web-02"]),
            201,
        ),
        ("admin", Some(admin), json!(["db-01"]), 201),
    ];
    for (i, (who, token, hosts, expected)) in table.iter().enumerate() {
        let (status, body) = post_with(
            &relay.url("/api/deployments"),
            *token,
            create(&format!("r{i}"), hosts.clone()),
        )
        .await
        .unwrap();
        assert_eq!(status, *expected, "{who} creates for {hosts}: {body}");
    }
    // r5 is the publisher's (web), r6 the admin's (db).
    let publisher = Some(tokens.publisher_web.token.as_str());
    let event = json!({"status": "running", "progress": 50, "logs": [{"message": "step"}]});
    for (path, token, expected) in [
        ("/api/deployments/r5/events", publisher, 200),
        ("/api/deployments/r6/events", publisher, 403),
        ("/api/deployments/r6/cancel", publisher, 403),
        (
            "/api/deployments/r6/events",
            Some(&*tokens.reader_web.token),
            403,
        ),
        ("/api/deployments/r5/cancel", publisher, 200),
        ("/api/deployments/r6/cancel", Some(admin), 200),
    ] {
        let (status, body) = post_with(&relay.url(path), token, event.clone())
            .await
            .unwrap();
        assert_eq!(status, expected, "POST {path}: {body}");
    }
    let (status, body) = post_with(
        &relay.url("/api/deployments"),
        publisher,
        json!({"application": "app", "hosts": ["web-03"]}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["deploymentId"].as_str().unwrap().to_owned();
    let (status, body) = post_with(
        &relay.url(&format!("/api/deployments/{id}/events")),
        publisher,
        json!({"logs": [{"message": "x"}], "host": "db-01"}),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "lines as another host: {body}");

    // WebSocket: a bearer on the upgrade; non-readers refused before it.
    for (who, token, expected) in [
        ("wrong", "wrong", Some(401)),
        ("agent", tokens.agent_web.token.as_str(), Some(403)),
        ("publisher", tokens.publisher_web.token.as_str(), Some(403)),
        ("reader", tokens.reader_web.token.as_str(), None),
        ("admin", admin, None),
    ] {
        let result = WsClient::connect_with_headers(
            &relay.ws_url(),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        match (result, expected) {
            (Err(status), Some(expected)) => assert_eq!(status, expected, "{who}"),
            (Ok(mut ws), None) => {
                ws.subscribe(json!({"type": "subscribe-logs", "host": "web-01"}))
                    .await
                    .unwrap();
            }
            (Ok(_), Some(expected)) => panic!("{who}: upgraded, expected {expected}"),
            (Err(status), None) => panic!("{who}: refused with {status}"),
        }
    }
    // The `authenticate` message: a publisher token cannot read, three
    // failures close with 4001 and a reason.
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let answer = ws.authenticate(&tokens.publisher_web.token).await.unwrap();
    assert_eq!(answer["code"], "unauthorized", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("publisher"));
    for _ in 0..2 {
        let answer = ws.authenticate("wrong").await.unwrap();
        assert_eq!(answer["code"], "unauthorized", "{answer}");
    }
    assert_eq!(
        ws.closed(WAIT).await.unwrap(),
        Closed::Frame {
            code: 4001,
            reason: "authentication failed".into()
        }
    );
    let failures = metric_value_with(&relay, "o1_auth_failures_total", Some(admin))
        .await
        .unwrap();
    assert!(failures >= 4.0, "{failures}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::create();
    let (pki, relay) = start(dir.path(), &tokens, "[auth]\nfailures_per_minute = 5\n");
    for _ in 0..5 {
        let (status, _) = get_with(&relay.url("/api/hosts"), Some("guess"))
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    // Over the allowance, even the right token waits: nothing is checked.
    let response = reqwest::Client::new()
        .get(relay.url("/api/hosts"))
        .bearer_auth(&pki.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let mut ws = WsClient::connect(&relay.ws_url()).await.unwrap();
    let answer = ws.authenticate(&pki.token).await.unwrap();
    assert_eq!(answer["code"], "rate_limit_exceeded", "{answer}");
    assert!(answer["retryAfter"].as_u64().is_some());
    // Other callers without a token are unaffected where none is needed.
    let (status, _) = get_with(&relay.url("/api/websocket/health"), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_certificate_names_its_host_and_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let output = std::process::Command::new(binary("o1-relay"))
        .args(["certs", "--out"])
        .arg(&pki.dir)
        .args(["--agent", "web-01"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let cert = pki.dir.join("agents/web-01.crt");
    let key = pki.dir.join("agents/web-01.key");
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        &format!("[uplink]\nclient_ca = \"{}\"\n", pki.ca().display()),
    )
    .unwrap();
    let with_cert = |host: &str| {
        let mut settings = sim_settings(&relay, &pki, host, "");
        settings.client_cert = Some((cert.clone(), key.clone()));
        settings
    };
    let mut agent = SimAgent::connect_settings(&with_cert("web-01"))
        .await
        .unwrap();
    agent
        .send(vec![log_item("app", Level::Info, "by certificate")])
        .await
        .unwrap();
    // The certificate of web-01 claiming web-02: refused, even with a
    // valid admin token alongside.
    let error = SimAgent::connect_settings(&with_cert("web-02"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("does not name host \"web-02\""), "{error}");
    let mut both = with_cert("web-02");
    both.token = pki.token.clone();
    assert!(SimAgent::connect_settings(&both).await.is_err());
    // No certificate, no token: refused.
    let error = SimAgent::connect_settings(&sim_settings(&relay, &pki, "web-01", ""))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("invalid token"), "{error}");
    // The real agent with only its certificate.
    let _agent = Agent::start_listed(
        &dir.path().join("agent"),
        &pki,
        &relay,
        "web-01",
        &format!(
            "[relay]\ntoken = \"\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await
    .unwrap();
    assert!(relay.log().contains("certificate:web-01"));
}

#[tokio::test(flavor = "multi_thread")]
async fn origins_and_hosts_outside_the_allow_lists_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        "[http]\nallowed_origins = [\"https://ops.example.com\"]\n",
    )
    .unwrap();
    let url = relay.ws_url();
    let own = format!("http://{}", relay.http);
    for (origin, expected) in [
        ("http://evil.example", Err(403)),
        ("null", Err(403)),
        ("https://ops.example.com", Ok(())),
        (own.as_str(), Ok(())),
        ("http://localhost:5173", Ok(())),
    ] {
        let result = WsClient::connect_with_headers(&url, &[("origin", origin)])
            .await
            .map(|_| ());
        assert_eq!(result, expected, "Origin: {origin}");
    }
    // DNS rebinding: a loopback relay serves loopback names only.
    for (host, expected) in [
        ("evil.example", 421),
        ("localhost", 200),
        (&relay.http.to_string() as &str, 200),
    ] {
        let response = reqwest::Client::new()
            .get(relay.url("/api/hosts"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "Host: {host}");
    }
    let response = reqwest::Client::new()
        .get(relay.url("/api/websocket/health"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "health is exempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_token_sha256_keeps_working_as_admin_with_a_deprecation_warning() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let old = Token::create("admin", &[], "old").unwrap();
    let digest = old
        .toml
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let relay = Relay::start(
        &dir.path().join("relay"),
        &pki,
        &format!("[auth]\nbrowsers = \"token\"\ntoken_sha256 = [\"{digest}\"]\n"),
    )
    .unwrap();
    let log = eventually(WAIT, || {
        let log = relay.log();
        async move {
            log.contains("auth.token_sha256 is deprecated")
                .then_some(log)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        log.matches("auth.token_sha256 is deprecated").count(),
        1,
        "said once at start: {log}"
    );
    // Reads, publishes and pushes as any host, as before roles existed.
    let (status, _) = get_with(&relay.url("/api/hosts"), Some(&old.token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = post_with(
        &relay.url("/api/deployments"),
        Some(&old.token),
        json!({"application": "app"}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let mut agent = SimAgent::connect_settings(&sim_settings(&relay, &pki, "any-host", &old.token))
        .await
        .unwrap();
    agent
        .send(vec![log_item("app", Level::Info, "still works")])
        .await
        .unwrap();
}
