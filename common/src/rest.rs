//! The REST API's request and response bodies (`/api/hosts`,
//! `/api/deployments`). The relay keeps its own state types and converts
//! them into these views; nothing relay-internal is serialized directly.

use serde::{Deserialize, Serialize};

use crate::api::DeploymentStatus;
use crate::{Level, Timestamp};

/// `GET /api/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostsResponse {
    /// Sorted by host name.
    pub hosts: Vec<HostView>,
}

/// One host of the inventory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostView {
    pub host: String,
    pub agent_id: String,
    pub agent_version: String,
    pub connected: bool,
    pub last_seen: Timestamp,
    pub connected_since: Option<Timestamp>,
    /// Sorted by name.
    pub applications: Vec<ApplicationView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplicationView {
    pub name: String,
    pub last_seen: Option<Timestamp>,
}

/// One deployment, as `GET /api/deployments/{id}` and every change answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentView {
    pub deployment_id: String,
    pub application: String,
    pub hosts: Vec<String>,
    pub status: DeploymentStatus,
    pub progress: u8,
    pub message: String,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

/// `GET /api/deployments?limit=&before=`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentPage {
    pub deployments: Vec<DeploymentView>,
    /// The `before` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// Query of `GET /api/deployments`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most deployments in the answer: 1-1000, default 100.
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<usize>,
    /// The `deploymentId` the previous page ended with.
    pub before: Option<String>,
}

/// `POST /api/deployments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeployment {
    /// Default: generated, `deploy-YYYYMMDD-HHMMSS[-N]`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,128}$"))]
    pub deployment_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub application: String,
    /// The hosts it deploys to; none: the whole fleet.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 100, value_type = Vec<HostName>))]
    pub hosts: Vec<String>,
    pub message: Option<String>,
}

/// `POST /api/deployments/{id}/events`: log lines, then a state change.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentEventRequest {
    pub status: Option<DeploymentStatus>,
    /// 0-100; a whole number (`5.0` is read as 5).
    #[serde(default, deserialize_with = "whole_number")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub progress: Option<i64>,
    pub message: Option<String>,
    #[serde(default)]
    pub logs: Vec<LogLineRequest>,
    /// Host the log lines come from; default `ci`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<HostName>))]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLineRequest {
    pub level: Option<Level>,
    pub message: String,
}

/// A host name as the relay keeps it: 1-253 characters, no control
/// characters (documentation type of the OpenAPI schema).
#[cfg(feature = "openapi")]
#[derive(Debug)]
pub struct HostName;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for HostName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(253))
            .pattern(Some("^[^\\u0000-\\u001f\\u007f-\\u009f]+$"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for HostName {}

/// An integer, also when written as a whole float (`5.0`): JSON Schema
/// counts both as integers, and so do JavaScript clients.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let number = Option::<serde_json::Number>::deserialize(deserializer)?;
    match number {
        None => Ok(None),
        Some(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, got {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_serializes_in_the_api_shape() {
        let at = Timestamp::parse("2024-01-15T10:30:00Z").unwrap();
        let view = DeploymentView {
            deployment_id: "d".into(),
            application: "web".into(),
            hosts: vec!["h".into()],
            status: DeploymentStatus::Running,
            progress: 5,
            message: "m".into(),
            started_at: at,
            updated_at: at,
            ended_at: None,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"deploymentId": "d", "application": "web", "hosts": ["h"],
                "status": "running", "progress": 5, "message": "m",
                "startedAt": "2024-01-15T10:30:00Z", "updatedAt": "2024-01-15T10:30:00Z"})
        );
        let bad = serde_json::from_str::<CreateDeployment>(r#"{"application":"a","extra":1}"#);
        assert!(bad.is_err());
        let progress =
            |text: &str| serde_json::from_str::<DeploymentEventRequest>(text).map(|r| r.progress);
        assert_eq!(progress(r#"{"progress":5.0}"#).unwrap(), Some(5));
        assert_eq!(progress(r#"{"progress":7}"#).unwrap(), Some(7));
        assert_eq!(progress(r#"{}"#).unwrap(), None);
        assert!(progress(r#"{"progress":5.5}"#).is_err());
        assert!(progress(r#"{"progress":"5"}"#).is_err());
    }
}
