//! The public WebSocket JSON API and REST response shapes, exactly as the
//! seed page (`websocket-api-reference.txt`) shows them, plus the additions
//! of DESIGN.md (`subscribed`, `unsubscribed`, `pong`, `dropped`,
//! `subscriptionId`, `requestId`, error codes).
//!
//! Field names are camelCase on the wire; `type` is the tag of every message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::level::Level;
use crate::timestamp::Timestamp;

/// A client's correlation id, echoed verbatim in replies. A JSON string or
/// number.
pub type RequestId = Value;

// ---------------------------------------------------------------------------
// Client → relay
// ---------------------------------------------------------------------------

/// Every message a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// Follow one deployment.
    Subscribe(SubscribeDeployment),
    SubscribeLogs(SubscribeLogs),
    SubscribeMetrics(SubscribeMetrics),
    Unsubscribe(Unsubscribe),
    Ping(Ping),
    /// Present a token (the first message, when the relay asks for one).
    Authenticate(Authenticate),
}

/// `{"type":"authenticate","token":…}`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticate {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticate")
            .field("token", &"<redacted>")
            .field("request_id", &self.request_id)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeDeployment {
    pub deployment_id: String,
    /// Resume: only what changed after this position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeLogs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Case-insensitive substring of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// Minimum level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Replay the last N matching lines first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Resume: replay every matching line after this position first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// A position to resume after: the `offset` of the last item received and
/// the `epoch` of the `subscribed` that preceded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: u64,
}

/// The metric families a subscriber may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricName {
    Cpu,
    Memory,
    Disk,
    Network,
}

impl MetricName {
    pub const ALL: [MetricName; 4] = [
        MetricName::Cpu,
        MetricName::Memory,
        MetricName::Disk,
        MetricName::Network,
    ];
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Absent means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<MetricName>>,
    /// Seconds of past samples to send first, oldest first (one per
    /// `HISTORY_STEP_SECS` per series, at most `MAX_HISTORY_SECS`), so a
    /// chart opens full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// The spacing of metric history samples, seconds.
pub const HISTORY_STEP_SECS: i64 = 5;
/// The most metric history a subscription can ask for: 15 minutes.
pub const MAX_HISTORY_SECS: u32 = 900;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsubscribe {
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl ClientMessage {
    /// The names of the client message types, for error messages.
    pub const TYPES: &'static str =
        "subscribe, subscribe-logs, subscribe-metrics, unsubscribe, ping, authenticate";

    /// Decodes one client text frame, with an error precise enough to send
    /// back as `invalid_message`: which field, what was expected.
    pub fn from_json(text: &str) -> Result<ClientMessage, DecodeError> {
        let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
            field: None,
            problem: format!("not valid JSON ({e}); send one JSON object per text frame"),
            request_id: None,
        })?;
        let Value::Object(object) = &value else {
            return Err(DecodeError {
                field: None,
                problem: format!("expected a JSON object, got {}", json_kind(&value)),
                request_id: None,
            });
        };
        let request_id = object.get("requestId").cloned();
        if let Some(id) = &request_id
            && !(id.is_string() || id.is_number())
        {
            return Err(DecodeError {
                field: Some("requestId".into()),
                problem: format!("expected a string or a number, got {}", json_kind(id)),
                request_id: None,
            });
        }
        let error = |field: &str, problem: String| DecodeError {
            field: Some(field.to_owned()),
            problem,
            request_id: request_id.clone(),
        };
        let kind = match object.get("type") {
            None => {
                return Err(error(
                    "type",
                    format!("missing; expected one of {}", Self::TYPES),
                ));
            }
            Some(Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(error(
                    "type",
                    format!("expected a string, got {}", json_kind(other)),
                ));
            }
        };
        fn typed<T: serde::de::DeserializeOwned>(
            value: &Value,
            request_id: &Option<RequestId>,
        ) -> Result<T, DecodeError> {
            serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
                let path = e.path().to_string();
                DecodeError {
                    field: (path != ".").then_some(path),
                    problem: e.into_inner().to_string(),
                    request_id: request_id.clone(),
                }
            })
        }
        let message = match kind {
            "subscribe" => ClientMessage::Subscribe(typed(&value, &request_id)?),
            "subscribe-logs" => ClientMessage::SubscribeLogs(typed(&value, &request_id)?),
            "subscribe-metrics" => ClientMessage::SubscribeMetrics(typed(&value, &request_id)?),
            "unsubscribe" => ClientMessage::Unsubscribe(typed(&value, &request_id)?),
            "ping" => ClientMessage::Ping(typed(&value, &request_id)?),
            "authenticate" => ClientMessage::Authenticate(typed(&value, &request_id)?),
            other => {
                return Err(error(
                    "type",
                    format!(
                        "unknown message type `{other}`; expected one of {}",
                        Self::TYPES
                    ),
                ));
            }
        };
        Ok(message)
    }

    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            ClientMessage::Subscribe(m) => m.request_id.as_ref(),
            ClientMessage::SubscribeLogs(m) => m.request_id.as_ref(),
            ClientMessage::SubscribeMetrics(m) => m.request_id.as_ref(),
            ClientMessage::Unsubscribe(m) => m.request_id.as_ref(),
            ClientMessage::Ping(m) => m.request_id.as_ref(),
            ClientMessage::Authenticate(m) => m.request_id.as_ref(),
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a client message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{problem}", field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct DecodeError {
    /// The offending field, as a path such as `metrics[2]`, when known.
    pub field: Option<String>,
    /// What was wrong and what was expected.
    pub problem: String,
    /// The message's `requestId`, when it could be read, to echo.
    pub request_id: Option<RequestId>,
}

// ---------------------------------------------------------------------------
// Relay → client
// ---------------------------------------------------------------------------

/// Every message the relay sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    Deployment(DeploymentMessage),
    Log(LogMessage),
    Metrics(MetricsMessage),
    Status(StatusMessage),
    Subscribed(SubscriptionAck),
    Unsubscribed(SubscriptionAck),
    Pong(Pong),
    Dropped(Dropped),
    Error(ErrorMessage),
    Authenticated(Authenticated),
    Gap(Gap),
}

impl ServerMessage {
    /// Serializes to the JSON text sent on the socket.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys,
        // no non-finite floats reach here (see `finite`).
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"connection_failed","message":"internal serialization error: {e}"}}"#)
        })
    }
}

/// Deployment lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeploymentStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl DeploymentStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Completed | DeploymentStatus::Failed | DeploymentStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    pub deployment_id: String,
    pub status: DeploymentStatus,
    pub message: String,
    pub timestamp: Timestamp,
    /// 0–100.
    pub progress: u8,
    /// The relay-wide position of this item (grows across restarts); give
    /// it back in `since` to resume after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// Present on a deployment's log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    pub host: String,
    pub application: String,
    pub level: Level,
    pub message: String,
    pub timestamp: Timestamp,
    /// The relay-wide position of this item (grows across restarts); give
    /// it back in `since` to resume after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Network throughput of a host, bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRates {
    pub rx_bytes_per_second: f64,
    pub tx_bytes_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    pub host: String,
    pub application: String,
    /// % of all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// % of RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    /// % used of the filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRates>,
    /// Resident bytes (application) or used bytes (host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Used bytes of the filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// `false` when none of the application's processes run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    pub status: DeploymentStatus,
    pub message: String,
    pub timestamp: Timestamp,
    /// The relay-wide position of this item (grows across restarts); give
    /// it back in `since` to resume after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Answers `subscribe*` (`subscribed`) and `unsubscribe` (`unsubscribed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionAck {
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The history's epoch (on `subscribed`): offsets compare only within
    /// one epoch; it changes when the relay's history was wiped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub timestamp: Timestamp,
}

/// Items after a `since` that are no longer held (or of another epoch):
/// sent before the replay; `missed` is how many, when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    pub subscription_id: String,
    pub missed: Option<u64>,
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    pub timestamp: Timestamp,
}

/// The answer to a good `authenticate`: what the token may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticated {
    /// `reader` or `admin`.
    pub role: String,
    /// The host globs the token covers (`["*"]`: every host).
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    pub timestamp: Timestamp,
}

/// Tells a slow reader how many messages of a subscription it missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dropped {
    pub subscription_id: String,
    pub count: u64,
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    ConnectionFailed,
    SubscriptionFailed,
    RateLimitExceeded,
    InvalidMessage,
    SubscriptionNotFound,
    Unauthorized,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// Seconds, with `rate_limit_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    pub timestamp: Timestamp,
}

impl ErrorMessage {
    pub fn new(code: ErrorCode, message: impl Into<String>, timestamp: Timestamp) -> Self {
        ErrorMessage {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            request_id: None,
            timestamp,
        }
    }

    /// The `invalid_message` reply for a message that did not decode.
    pub fn invalid(error: &DecodeError, timestamp: Timestamp) -> Self {
        let mut reply = ErrorMessage::new(ErrorCode::InvalidMessage, error.to_string(), timestamp);
        reply.request_id = error.request_id.clone();
        if let Some(field) = &error.field {
            reply.details = Some(serde_json::json!({ "field": field }));
        }
        reply
    }
}

// ---------------------------------------------------------------------------
// REST: GET /api/websocket/{stats,metrics,health}
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsResponse {
    pub total_connections: u64,
    pub pool_stats: PoolStats,
    pub batcher_stats: BatcherStats,
    pub processor_stats: ProcessorStats,
    pub performance_metrics: PerformanceMetrics,
    /// Clustered relays only: this relay's view of the shared stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// `stats.cluster`: figures of the NATS JetStream a clustered relay shares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStats {
    /// This relay's name in the cluster.
    pub relay: String,
    /// Connected to NATS and caught up.
    pub healthy: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last stream sequence this relay applied.
    pub applied_sequence: u64,
    /// The stream's last sequence (refreshed every second).
    pub stream_last_sequence: u64,
    /// Messages stored but not yet applied here.
    pub lag_messages: u64,
    pub stream_messages: u64,
    pub stream_bytes: u64,
    /// Consumers on the stream (one per relay, plus `since` replays).
    pub consumers: u64,
    /// Messages this relay published (agent batch parts, deployment changes).
    pub published_messages: u64,
    /// Publishes JetStream did not confirm (the agent was not acked).
    pub publish_failures: u64,
    /// Resends JetStream dropped by message id (after a failover).
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStats {
    pub active: u64,
    pub idle: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatcherStats {
    pub batches_processed: u64,
    pub messages_processed: u64,
    pub average_batch_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessorStats {
    pub messages_processed: u64,
    pub errors: u64,
    pub success_rate: f64,
}

/// Ingest-to-socket latency, milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PerformanceMetrics {
    pub average_response_time: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsResponse {
    pub connections: ConnectionCounts,
    pub messages: MessageCounts,
    pub performance: ProcessPerformance,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionCounts {
    pub current: u64,
    pub peak: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageCounts {
    pub sent: u64,
    pub received: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessPerformance {
    /// Like `15d 6h 30m`.
    pub uptime: String,
    /// Like `45.2MB`.
    pub memory_usage: String,
    /// Like `12.5%`.
    pub cpu_usage: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    pub status: HealthStatus,
    pub connection_count: u64,
    pub timestamp: Timestamp,
    /// Why the relay is not healthy (absent when it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Formats an uptime like the seed page: `15d 6h 30m` (`0d 0h 0m` at start).
pub fn format_uptime(seconds: u64) -> String {
    let days = seconds / 86_400;
    let hours = seconds % 86_400 / 3_600;
    let minutes = seconds % 3_600 / 60;
    format!("{days}d {hours}h {minutes}m")
}

/// Formats bytes like the seed page: `45.2MB` (MB = 2^20 bytes).
pub fn format_megabytes(bytes: u64) -> String {
    format!("{:.1}MB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_error(text: &str) -> DecodeError {
        ClientMessage::from_json(text).expect_err(text)
    }

    #[test]
    fn bad_client_messages_name_the_problem() {
        // (input, field, a fragment the problem must contain)
        let table: &[(&str, Option<&str>, &str)] = &[
            ("not json", None, "not valid JSON"),
            ("[1,2]", None, "expected a JSON object, got an array"),
            (r#"{"deploymentId":"x"}"#, Some("type"), "missing"),
            (
                r#"{"type":7}"#,
                Some("type"),
                "expected a string, got a number",
            ),
            (
                r#"{"type":"subscribe-everything"}"#,
                Some("type"),
                "unknown message type `subscribe-everything`",
            ),
            (
                r#"{"type":"subscribe"}"#,
                None,
                "missing field `deploymentId`",
            ),
            (
                r#"{"type":"subscribe","deploymentId":42}"#,
                Some("deploymentId"),
                "expected a string",
            ),
            (
                r#"{"type":"subscribe-logs","tail":"ten"}"#,
                Some("tail"),
                "expected u32",
            ),
            (
                r#"{"type":"subscribe-logs","tail":-1}"#,
                Some("tail"),
                "expected u32",
            ),
            (
                r#"{"type":"subscribe-logs","level":"loud"}"#,
                Some("level"),
                "unknown level `loud`",
            ),
            (
                r#"{"type":"subscribe-metrics","metrics":["cpu","gpu"]}"#,
                Some("metrics[1]"),
                "unknown variant `gpu`",
            ),
            (
                r#"{"type":"subscribe-metrics","metrics":"cpu"}"#,
                Some("metrics"),
                "expected a sequence",
            ),
            (
                r#"{"type":"unsubscribe"}"#,
                None,
                "missing field `subscriptionId`",
            ),
            (
                r#"{"type":"ping","requestId":{"a":1}}"#,
                Some("requestId"),
                "expected a string or a number",
            ),
        ];
        for (input, field, fragment) in table {
            let error = decode_error(input);
            assert_eq!(error.field.as_deref(), *field, "field for {input}: {error}");
            assert!(
                error.to_string().contains(fragment),
                "{input}: `{error}` lacks `{fragment}`"
            );
        }
    }

    #[test]
    fn request_id_is_kept_for_error_replies() {
        let error = decode_error(r#"{"type":"subscribe","requestId":"r-1"}"#);
        assert_eq!(error.request_id, Some(Value::String("r-1".into())));
        let reply = ErrorMessage::invalid(&error, Timestamp::from_unix_millis(0));
        let json: Value = serde_json::from_str(&ServerMessage::Error(reply).to_json()).unwrap();
        assert_eq!(json["code"], "invalid_message");
        assert_eq!(json["requestId"], "r-1");
    }

    #[test]
    fn valid_messages_decode_with_optional_fields() {
        let message = ClientMessage::from_json(
            r#"{"type":"subscribe-logs","level":"warn","tail":5,"requestId":3,"extra":true}"#,
        )
        .unwrap();
        let ClientMessage::SubscribeLogs(logs) = message else {
            panic!("wrong type")
        };
        assert_eq!(logs.level, Some(Level::Warning));
        assert_eq!(logs.tail, Some(5));
        assert_eq!(logs.request_id, Some(Value::from(3)));
        assert_eq!(logs.host, None);
    }

    #[test]
    fn uptime_and_memory_format_like_the_seed() {
        assert_eq!(
            format_uptime(15 * 86_400 + 6 * 3_600 + 30 * 60 + 59),
            "15d 6h 30m"
        );
        assert_eq!(format_uptime(0), "0d 0h 0m");
        assert_eq!(format_megabytes(47_395_635), "45.2MB");
    }
}
