//! REST: the seed's statistics endpoints, Prometheus `/metrics`, the host
//! inventory and deployment publishing for CI systems.

// Helpers return `Result<_, Response>` so handlers can `?`-style bail out
// with a ready HTTP answer; the error path is cold, its size irrelevant.
#![allow(clippy::result_large_err)]

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use o1_common::Level;
use o1_common::Timestamp;
use o1_common::api::{
    BatcherStats, ConnectionCounts, DeploymentStatus, ErrorCode, ErrorMessage, HealthResponse,
    HealthStatus, MessageCounts, MetricsResponse, PerformanceMetrics, PoolStats,
    ProcessPerformance, ProcessorStats, ServerMessage, StatsResponse, format_megabytes,
    format_uptime,
};
use o1_common::rest::{
    CreateDeployment, DeploymentEventRequest, DeploymentPage, HostsResponse, ListQuery,
};

use crate::AppState;
use crate::deployments::{DeploymentError, Update};

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ServerMessage::Error(ErrorMessage::new(code, message, Timestamp::now()));
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_json(),
    )
        .into_response()
}

pub async fn stats(State(state): State<AppState>) -> Json<StatsResponse> {
    let stats = &state.stats;
    let total = stats.connections_current.get();
    let active = stats.connections_active.get().min(total);
    let batches = stats.batches_ingested.get();
    let items = stats.items_ingested.get();
    let errors = stats.processing_errors.get();
    let (average, p95, p99) = stats.latency_millis();
    Json(StatsResponse {
        total_connections: total,
        pool_stats: PoolStats {
            active,
            idle: total - active,
            total,
        },
        batcher_stats: BatcherStats {
            batches_processed: batches,
            messages_processed: items,
            average_batch_size: items.checked_div(batches).unwrap_or(0),
        },
        processor_stats: ProcessorStats {
            messages_processed: items,
            errors,
            success_rate: if items == 0 {
                100.0
            } else {
                ((items.saturating_sub(errors)) as f64 / items as f64 * 10_000.0).round() / 100.0
            },
        },
        performance_metrics: PerformanceMetrics {
            average_response_time: average,
            p95,
            p99,
        },
    })
}

pub async fn metrics(State(state): State<AppState>) -> Json<MetricsResponse> {
    let stats = &state.stats;
    let (cpu, memory) = stats.process_usage();
    Json(MetricsResponse {
        connections: ConnectionCounts {
            current: stats.connections_current.get(),
            peak: stats.connections_peak.get(),
            total: stats.connections_total.get(),
        },
        messages: MessageCounts {
            sent: stats.messages_sent.get(),
            received: stats.messages_received.get(),
            dropped: stats.messages_dropped.get(),
        },
        performance: ProcessPerformance {
            uptime: format_uptime(stats.uptime().as_secs()),
            memory_usage: format_megabytes(memory),
            cpu_usage: format!("{cpu:.1}%"),
        },
    })
}

pub async fn health(State(state): State<AppState>) -> Response {
    let connection_count = state.stats.connections_current.get();
    let (status, code) = if state.shutdown.is_cancelled() {
        (HealthStatus::Unhealthy, StatusCode::SERVICE_UNAVAILABLE)
    } else if state.gate.is_full() {
        (HealthStatus::Degraded, StatusCode::SERVICE_UNAVAILABLE)
    } else {
        (HealthStatus::Healthy, StatusCode::OK)
    };
    let body = HealthResponse {
        status,
        connection_count,
        timestamp: Timestamp::now(),
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn prometheus(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.stats.encode_metrics(),
    )
        .into_response()
}

/// `GET /api/hosts`.
pub async fn hosts(State(state): State<AppState>) -> Response {
    Json(HostsResponse {
        hosts: state.inventory.snapshot(),
    })
    .into_response()
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(token) if state.tokens.verify(token) => Ok(()),
        Some(_) => Err(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "Invalid token",
        )),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "Missing token: send `Authorization: Bearer <token>`",
        )),
    }
}

fn deployment_error(e: DeploymentError) -> Response {
    let status = match e {
        DeploymentError::NotFound => StatusCode::NOT_FOUND,
        DeploymentError::AlreadyExists(_)
        | DeploymentError::AlreadyEnded(_)
        | DeploymentError::BackToPending => StatusCode::CONFLICT,
        DeploymentError::InvalidId(_)
        | DeploymentError::ProgressOutOfRange(_)
        | DeploymentError::TooLong(..) => StatusCode::UNPROCESSABLE_ENTITY,
        DeploymentError::TooManyActive(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::SubscriptionFailed,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimitExceeded,
        _ => ErrorCode::InvalidMessage,
    };
    error(status, code, e.to_string())
}

/// Parses a JSON body into `T`, with a 400 that names the field.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            format!("invalid JSON body: {}", e.inner())
        } else {
            format!("field `{path}`: {}", e.inner())
        };
        error(StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage, message)
    })
}

/// `POST /api/deployments`.
pub async fn create_deployment(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = authorize(&state, &headers) {
        return response;
    }
    let request: CreateDeployment = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let created = state.hub.lock_deployments().create(
        request.deployment_id,
        request.application,
        request.hosts,
        request.message,
        Timestamp::now(),
    );
    match created {
        Ok(deployment) => (StatusCode::CREATED, Json(deployment.view())).into_response(),
        Err(e) => deployment_error(e),
    }
}

/// `POST /api/deployments/{id}/events`: log lines, then a state change.
pub async fn deployment_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = authorize(&state, &headers) {
        return response;
    }
    let request: DeploymentEventRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let now = Timestamp::now();
    if let Some(progress) = request.progress
        && !(0..=100).contains(&progress)
    {
        return deployment_error(DeploymentError::ProgressOutOfRange(progress));
    }
    if !request.logs.is_empty() {
        let lines: Vec<(Level, String)> = request
            .logs
            .into_iter()
            .map(|l| (l.level.unwrap_or_default(), l.message))
            .collect();
        let host = request.host.as_deref().unwrap_or("ci");
        if let Err(e) = state.hub.deployment_logs(&id, host, &lines, now) {
            return deployment_error(e);
        }
    }
    if request.status.is_none() && request.progress.is_none() && request.message.is_none() {
        return match state.hub.lock_deployments().get(&id) {
            Some(deployment) => Json(deployment.view()).into_response(),
            None => deployment_error(DeploymentError::NotFound),
        };
    }
    let update = Update {
        status: request.status,
        progress: request.progress,
        message: request.message,
    };
    match state.hub.update_deployment(&id, update, now) {
        Ok(deployment) => Json(deployment.view()).into_response(),
        Err(e) => deployment_error(e),
    }
}

/// `POST /api/deployments/{id}/cancel`.
pub async fn cancel_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&state, &headers) {
        return response;
    }
    let update = Update {
        status: Some(DeploymentStatus::Cancelled),
        progress: None,
        message: Some("Deployment cancelled".into()),
    };
    match state.hub.update_deployment(&id, update, Timestamp::now()) {
        Ok(deployment) => Json(deployment.view()).into_response(),
        Err(e) => deployment_error(e),
    }
}

/// Largest page of `GET /api/deployments`.
pub const MAX_PAGE: usize = 1000;

/// `GET /api/deployments?limit=&before=`: newest first, one page; `next`
/// is the `before` of the next page (`null` on the last). Built and
/// serialized on a blocking thread, never on the async workers.
pub async fn list_deployments(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(axum::extract::Query(query)) => query,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidMessage,
                rejection.body_text(),
            );
        }
    };
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let hub = state.hub.clone();
    let built = tokio::task::spawn_blocking(move || {
        let (page, more) = hub.lock_deployments().page(query.before.as_deref(), limit);
        let next = more
            .then(|| page.last().map(|d| d.deployment_id.clone()))
            .flatten();
        serde_json::to_vec(&DeploymentPage {
            deployments: page,
            next,
        })
    })
    .await;
    match built {
        Ok(Ok(body)) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ConnectionFailed,
            "cannot list deployments",
        ),
    }
}

/// `GET /api/deployments/{id}`.
pub async fn get_deployment(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.hub.lock_deployments().get(&id) {
        Some(deployment) => Json(deployment.view()).into_response(),
        None => deployment_error(DeploymentError::NotFound),
    }
}

/// Any other path.
pub async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorCode::InvalidMessage,
        "No such endpoint",
    )
}
