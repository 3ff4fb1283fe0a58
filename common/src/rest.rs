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
    /// Most deployments in the answer (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `deploymentId` the previous page ended with.
    pub before: Option<String>,
}

/// `POST /api/deployments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeployment {
    pub deployment_id: Option<String>,
    pub application: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub message: Option<String>,
}

/// `POST /api/deployments/{id}/events`: log lines, then a state change.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentEventRequest {
    pub status: Option<DeploymentStatus>,
    pub progress: Option<i64>,
    pub message: Option<String>,
    #[serde(default)]
    pub logs: Vec<LogLineRequest>,
    /// Host the log lines come from; default `ci`.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLineRequest {
    pub level: Option<Level>,
    pub message: String,
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
    }
}
