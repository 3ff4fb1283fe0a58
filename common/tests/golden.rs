//! Golden test: every JSON example on the public API page
//! (`docs/websocket-api-reference.txt`, a verbatim copy of the seed page)
//! parses into our types and serializes back to exactly the same field
//! names, values and JSON types.

use o1_common::Timestamp;
use o1_common::api::{
    ClientMessage, HealthResponse, MetricsResponse, ServerMessage, StatsResponse,
};
use serde_json::Value;

const PAGE: &str = include_str!("../../docs/websocket-api-reference.txt");

/// The JSON documents on the page: blocks from a line `{` to its matching `}`.
fn json_examples() -> Vec<String> {
    let mut examples = Vec::new();
    let mut current: Option<(String, i32)> = None;
    for line in PAGE.lines() {
        if current.is_none() && line.trim() == "{" {
            current = Some((String::new(), 0));
        }
        if let Some((text, depth)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
            *depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if *depth == 0 {
                examples.push(std::mem::take(text));
                current = None;
            }
        }
    }
    examples
}

/// The client messages on the page: the object literals inside
/// `JSON.stringify({...})`, turned from JavaScript into JSON.
fn client_examples() -> Vec<String> {
    let mut examples = Vec::new();
    let mut rest = PAGE;
    while let Some(start) = rest.find("JSON.stringify(") {
        rest = &rest[start + "JSON.stringify(".len()..];
        let Some(end) = rest.find("})") else { break };
        let literal = &rest[..=end];
        let mut json = String::new();
        for line in literal.lines() {
            let line = line.trim().trim_end_matches(',');
            // The dashboard examples pass their constructor's arguments.
            let line = line
                .replace('\'', "\"")
                .replace("this.deploymentId", "\"deploy-20240115-103000\"")
                .replace("this.host", "\"test-anvil-01\"")
                .replace("this.application", "\"Anvil\"");
            if let Some((key, value)) = line.split_once(": ") {
                json.push_str(&format!("\"{key}\": {value},"));
            } else {
                json.push_str(&line);
            }
        }
        examples.push(json.replace(",}", "}"));
        rest = &rest[end..];
    }
    examples
}

fn assert_same_json(original: &Value, round_tripped: &Value, context: &str) {
    assert_eq!(
        original, round_tripped,
        "{context}: serialized form differs from the page"
    );
}

#[test]
fn every_server_example_round_trips_exactly() {
    let examples = json_examples();
    assert_eq!(examples.len(), 10, "the page has 10 JSON examples");
    let mut kinds = Vec::new();
    for text in &examples {
        let original: Value = serde_json::from_str(text).expect("page example is JSON");
        let round_tripped = if original.get("type").is_some() {
            let message: ServerMessage =
                serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{text}: {e}"));
            kinds.push(original["type"].as_str().unwrap().to_owned());
            serde_json::to_value(&message).unwrap()
        } else if original.get("totalConnections").is_some() {
            kinds.push("stats".into());
            let stats: StatsResponse = serde_json::from_value(original.clone()).unwrap();
            serde_json::to_value(stats).unwrap()
        } else if original.get("connections").is_some() {
            kinds.push("metrics-response".into());
            let metrics: MetricsResponse = serde_json::from_value(original.clone()).unwrap();
            serde_json::to_value(metrics).unwrap()
        } else {
            kinds.push("health".into());
            let health: HealthResponse = serde_json::from_value(original.clone()).unwrap();
            serde_json::to_value(health).unwrap()
        };
        assert_same_json(&original, &round_tripped, text);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "deployment",
            "error",
            "error",
            "error",
            "health",
            "log",
            "metrics",
            "metrics-response",
            "stats",
            "status"
        ]
    );
}

#[test]
fn field_types_match_the_page() {
    let examples: Vec<Value> = json_examples()
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    for example in &examples {
        if let Some(timestamp) = example.get("timestamp") {
            let text = timestamp.as_str().expect("timestamp is a string");
            let parsed = Timestamp::parse(text).expect("timestamp is RFC 3339");
            assert_eq!(parsed.to_string(), text, "timestamps print as on the page");
        }
        match example.get("type").and_then(Value::as_str) {
            Some("deployment") => {
                let message: ServerMessage = serde_json::from_value(example.clone()).unwrap();
                let back = serde_json::to_value(message).unwrap();
                assert!(back["progress"].is_u64(), "progress is an integer");
            }
            Some("metrics") => {
                let message: ServerMessage = serde_json::from_value(example.clone()).unwrap();
                let back = serde_json::to_value(message).unwrap();
                for field in ["cpu", "memory", "disk"] {
                    assert!(back[field].is_f64(), "{field} is a number with a fraction");
                }
            }
            Some("error") if example["code"] == "rate_limit_exceeded" => {
                let message: ServerMessage = serde_json::from_value(example.clone()).unwrap();
                let back = serde_json::to_value(message).unwrap();
                assert!(back["retryAfter"].is_u64(), "retryAfter is whole seconds");
            }
            _ => {}
        }
    }
}

#[test]
fn every_client_example_decodes_and_round_trips() {
    let examples = client_examples();
    assert_eq!(
        examples.len(),
        7,
        "the page sends 7 client messages: {examples:?}"
    );
    for text in &examples {
        let message = ClientMessage::from_json(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let original: Value = serde_json::from_str(text).unwrap();
        assert_same_json(&original, &serde_json::to_value(&message).unwrap(), text);
    }
}
