//! Writes valid uplink frames as a seed corpus for the fuzzer:
//! `cargo run -p o1-common --example fuzz_seeds -- common/fuzz/seeds/decode_frame`

use o1_common::Level;
use o1_common::api::DeploymentStatus;
use o1_common::wire::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    std::fs::create_dir_all(&dir)?;
    let log = |message: &str| {
        Item::Log(LogRecord {
            application: "web".into(),
            timestamp_ms: 1_700_000_000_000,
            level: Level::Warning,
            message: message.into(),
            deployment_id: None,
        })
    };
    let agent = [
        AgentMessage::Hello(Hello {
            agent_id: "a1".into(),
            host: "web-01".into(),
            agent_version: "0.1.0".into(),
            credentials: Credentials::Token("token".into()),
            applications: vec!["web".into(), "db".into()],
        }),
        AgentMessage::Batch(Batch {
            sequence: 7,
            items: vec![
                log("hello"),
                Item::Metric(MetricSample {
                    application: "system".into(),
                    timestamp_ms: 1,
                    up: true,
                    cpu_percent: 12.5,
                    memory_percent: 40.0,
                    memory_bytes: 1 << 30,
                    disk_percent: Some(20.0),
                    disk_bytes: Some(1 << 35),
                    network: Some((100.0, 200.0)),
                }),
                Item::Deployment(DeploymentEvent {
                    deployment_id: "deploy-1".into(),
                    application: "web".into(),
                    timestamp_ms: 2,
                    status: DeploymentStatus::Running,
                    progress: Some(45),
                    message: "Installing".into(),
                }),
            ],
            dropped_items: 3,
        }),
    ];
    for (i, message) in agent.iter().enumerate() {
        let mut frame = Vec::new();
        encode_frame(message, &mut frame, DEFAULT_MAX_FRAME)?;
        std::fs::write(format!("{dir}/agent-{i}"), frame)?;
    }
    let relay = [
        RelayMessage::Ack(Ack { sequence: 9 }),
        RelayMessage::Welcome(Welcome {
            relay_version: "0.1.0".into(),
        }),
        RelayMessage::Refused(Refused {
            reason: "invalid token".into(),
        }),
    ];
    for (i, message) in relay.iter().enumerate() {
        let mut frame = Vec::new();
        encode_frame(message, &mut frame, DEFAULT_MAX_FRAME)?;
        std::fs::write(format!("{dir}/relay-{i}"), frame)?;
    }
    Ok(())
}
