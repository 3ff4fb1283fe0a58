//! REST: the seed's statistics endpoints, Prometheus `/metrics`, the host
//! inventory and deployment publishing for CI systems.

// Helpers return `Result<_, Response>` so handlers can `?`-style bail out
// with a ready HTTP answer; the error path is cold, its size irrelevant.
#![allow(clippy::result_large_err)]

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use o1_common::Level;
use o1_common::Timestamp;
#[allow(unused_imports)] // named by the OpenAPI annotations only
use o1_common::api::{
    BatcherStats, ConnectionCounts, DeploymentStatus, ErrorCode, ErrorMessage, HealthResponse,
    HealthStatus, MessageCounts, MetricsResponse, PerformanceMetrics, PoolStats,
    ProcessPerformance, ProcessorStats, ServerMessage, StatsResponse, format_megabytes,
    format_uptime,
};
use o1_common::rest::{
    CreateDeployment, DeploymentEventRequest, DeploymentPage, DeploymentView, HostsResponse,
    ListQuery,
};

use crate::AppState;
use crate::api::access::{self, Denied};
use crate::deployments::{DeploymentError, Update};

/// The client address of a request (the proxy's client when the peer is a
/// trusted proxy).
fn client(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    crate::api::websocket::client_address(peer.ip(), headers, &state.config.http.trusted_proxies)
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ServerMessage::Error(ErrorMessage::new(code, message, Timestamp::now()));
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_json(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/api/websocket/stats",
    tag = "statistics",
    description = "Connection, batching, processing and latency statistics (the seed page's shape).",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Statistics", body = StatsResponse),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<StatsResponse>, Denied> {
    access::reader(&state, &headers, client(&state, peer, &headers))?;
    let stats = &state.stats;
    let total = stats.connections_current.get();
    let active = stats.connections_active.get().min(total);
    let batches = stats.batches_ingested.get();
    let items = stats.items_ingested.get();
    let errors = stats.processing_errors.get();
    let (average, p95, p99) = stats.latency_millis();
    Ok(Json(StatsResponse {
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
        cluster: state.hub.cluster().map(|c| c.snapshot()),
    }))
}

#[utoipa::path(
    get,
    path = "/api/websocket/metrics",
    tag = "statistics",
    description = "Connection and message counts and the relay process's resource use (the seed page's shape).",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Metrics", body = MetricsResponse),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<MetricsResponse>, Denied> {
    access::reader(&state, &headers, client(&state, peer, &headers))?;
    let stats = &state.stats;
    let (cpu, memory) = stats.process_usage();
    Ok(Json(MetricsResponse {
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
    }))
}

#[utoipa::path(
    get,
    path = "/api/websocket/health",
    tag = "statistics",
    description = "Health for load balancers: always open, never needs a token.",
    responses(
        (status = 200, description = "Healthy", body = HealthResponse),
        (status = 503, description = "Degraded (connection limit reached) or shutting down", body = HealthResponse)
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let connection_count = state.stats.connections_current.get();
    let cluster_trouble = state.hub.cluster().and_then(|c| c.trouble());
    let (status, code, reason) = if state.shutdown.is_cancelled() {
        (
            HealthStatus::Unhealthy,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("shutting down".to_owned()),
        )
    } else if state.gate.is_full() {
        (
            HealthStatus::Degraded,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("websocket.max_connections reached".to_owned()),
        )
    } else if let Some(trouble) = cluster_trouble {
        (
            HealthStatus::Degraded,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(trouble),
        )
    } else {
        (HealthStatus::Healthy, StatusCode::OK, None)
    };
    let body = HealthResponse {
        status,
        connection_count,
        timestamp: Timestamp::now(),
        reason,
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition (a reader or admin token
/// unless `http.metrics_open`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "statistics",
    description = "Prometheus/OpenMetrics text exposition; a reader or admin token unless `http.metrics_open`.",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn prometheus(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !state.config.http.metrics_open
        && let Err(denied) = access::reader(&state, &headers, client(&state, peer, &headers))
    {
        return denied.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .stats
            .encode_metrics(state.hub.cluster().map(|c| c.snapshot()).as_ref()),
    )
        .into_response()
}

/// `GET /api/hosts`: the hosts the caller may see.
#[utoipa::path(
    get,
    path = "/api/hosts",
    tag = "inventory",
    description = "The hosts the caller may see, with their applications and last-seen times.",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Hosts, sorted by name", body = HostsResponse),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn hosts(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<HostsResponse>, Denied> {
    let caller = access::reader(&state, &headers, client(&state, peer, &headers))?;
    // Clustered: every relay's hosts, from the cluster's bucket.
    let mut hosts = match state.hub.cluster() {
        Some(cluster) => cluster.hosts(
            Timestamp::now(),
            std::time::Duration::from_secs(state.config.uplink.forget_hosts_after_secs),
        ),
        None => state.inventory.snapshot(),
    };
    hosts.retain(|h| caller.scope.allows(&h.host));
    Ok(Json(HostsResponse { hosts }))
}

fn deployment_error(e: DeploymentError) -> Response {
    let status = match e {
        DeploymentError::NotFound => StatusCode::NOT_FOUND,
        DeploymentError::AlreadyExists(_)
        | DeploymentError::AlreadyEnded(_)
        | DeploymentError::BackToPending => StatusCode::CONFLICT,
        DeploymentError::InvalidId(_)
        | DeploymentError::ProgressOutOfRange(_)
        | DeploymentError::TooLong(..)
        | DeploymentError::InvalidHost(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeploymentError::TooManyActive(_) => StatusCode::TOO_MANY_REQUESTS,
        DeploymentError::Forbidden(_) => StatusCode::FORBIDDEN,
        DeploymentError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::SubscriptionFailed,
        StatusCode::FORBIDDEN => ErrorCode::Unauthorized,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::ConnectionFailed,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimitExceeded,
        _ => ErrorCode::InvalidMessage,
    };
    error(status, code, e.to_string())
}

/// Whether `caller` covers the hosts of deployment `id` (404 when there
/// is none).
fn may_change(
    state: &AppState,
    caller: &crate::auth::Credential,
    id: &str,
) -> Result<(), Response> {
    let registry = state.hub.lock_deployments();
    let deployment = registry
        .get(id)
        .ok_or_else(|| deployment_error(DeploymentError::NotFound))?;
    access::covers(caller, &deployment.hosts, "this deployment")
        .map_err(IntoResponse::into_response)
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
#[utoipa::path(
    post,
    path = "/api/deployments",
    tag = "deployments",
    description = "Creates a deployment (publisher or admin, covering every host it names).",
    request_body = CreateDeployment,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = DeploymentView),
        (status = 400, description = "Malformed body", body = ErrorMessage),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 409, description = "The id exists already", body = ErrorMessage),
        (status = 422, description = "Invalid id or a field too long", body = ErrorMessage),
        (status = 429, description = "Too many deployments in progress, or too many failed authentications", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn create_deployment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let caller = match access::publisher(&state, &headers, client(&state, peer, &headers)) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let request: CreateDeployment = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Err(denied) = access::covers(&caller, &request.hosts, "this deployment") {
        return denied.into_response();
    }
    let created = state
        .hub
        .append_create(
            request.deployment_id,
            request.application,
            request.hosts,
            request.message,
            Timestamp::now(),
        )
        .await;
    match created {
        Ok(deployment) => (StatusCode::CREATED, Json(deployment)).into_response(),
        Err(e) => deployment_error(e),
    }
}

/// `POST /api/deployments/{id}/events`: log lines, then a state change.
#[utoipa::path(
    post,
    path = "/api/deployments/{id}/events",
    tag = "deployments",
    description = "Publishes log lines of a deployment, then a change of status, progress or message.",
    params(("id" = String, Path, description = "Deployment id")),
    request_body = DeploymentEventRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The deployment after the change", body = DeploymentView),
        (status = 400, description = "Malformed body", body = ErrorMessage),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 404, description = "No such deployment", body = ErrorMessage),
        (status = 409, description = "The deployment has ended, or cannot go back to pending", body = ErrorMessage),
        (status = 422, description = "Progress outside 0-100, or a field too long", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn deployment_event(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let caller = match access::publisher(&state, &headers, client(&state, peer, &headers)) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let request: DeploymentEventRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Err(response) = may_change(&state, &caller, &id) {
        return response;
    }
    if let Some(host) = &request.host
        && (host.is_empty() || host.chars().count() > 253 || host.chars().any(char::is_control))
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidMessage,
            "field `host`: 1-253 characters without control characters",
        );
    }
    if let Some(host) = &request.host
        && !caller.scope.allows(host)
    {
        return Denied::Forbidden(format!(
            "this credential may not publish lines as host {host:?}"
        ))
        .into_response();
    }
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
        if let Err(e) = state
            .hub
            .append_deployment_logs(&id, host, &lines, now)
            .await
        {
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
    match state.hub.append_update(&id, update, now).await {
        Ok(deployment) => Json(deployment).into_response(),
        Err(e) => deployment_error(e),
    }
}

/// `POST /api/deployments/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/api/deployments/{id}/cancel",
    tag = "deployments",
    description = "Cancels a deployment.",
    params(("id" = String, Path, description = "Deployment id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cancelled deployment", body = DeploymentView),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 404, description = "No such deployment", body = ErrorMessage),
        (status = 409, description = "The deployment has ended already", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn cancel_deployment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match access::publisher(&state, &headers, client(&state, peer, &headers)) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    if let Err(response) = may_change(&state, &caller, &id) {
        return response;
    }
    let update = Update {
        status: Some(DeploymentStatus::Cancelled),
        progress: None,
        message: Some("Deployment cancelled".into()),
    };
    match state.hub.append_update(&id, update, Timestamp::now()).await {
        Ok(deployment) => Json(deployment).into_response(),
        Err(e) => deployment_error(e),
    }
}

/// Largest page of `GET /api/deployments`.
pub const MAX_PAGE: usize = 1000;

/// `GET /api/deployments?limit=&before=`: newest first, one page; `next`
/// is the `before` of the next page (`null` on the last). Built and
/// serialized on a blocking thread, never on the async workers.
#[utoipa::path(
    get,
    path = "/api/deployments",
    tag = "deployments",
    description = "Deployments the caller may see, newest first, one page.",
    params(ListQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "One page", body = DeploymentPage),
        (status = 400, description = "Malformed query", body = ErrorMessage),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn list_deployments(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match access::reader(&state, &headers, client(&state, peer, &headers)) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
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
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidMessage,
            format!("limit: must be 1-{MAX_PAGE}"),
        );
    }
    let hub = state.hub.clone();
    let built = tokio::task::spawn_blocking(move || {
        let (page, more) = hub
            .lock_deployments()
            .page(query.before.as_deref(), limit, |d| {
                caller.scope.covers(&d.hosts)
            });
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
#[utoipa::path(
    get,
    path = "/api/deployments/{id}",
    tag = "deployments",
    description = "One deployment.",
    params(("id" = String, Path, description = "Deployment id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The deployment", body = DeploymentView),
        (status = 401, description = "Missing or invalid token (`WWW-Authenticate: Bearer`)", body = ErrorMessage),
        (status = 403, description = "The token's role or hosts do not allow this", body = ErrorMessage),
        (status = 404, description = "No such deployment", body = ErrorMessage),
        (status = 429, description = "Too many failed authentications from this address (`Retry-After`)", body = ErrorMessage),
        (status = 421, description = "The `Host` header is not in `http.allowed_hosts`", body = ErrorMessage)
    )
)]
pub async fn get_deployment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match access::reader(&state, &headers, client(&state, peer, &headers)) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let registry = state.hub.lock_deployments();
    match registry.get(&id) {
        Some(deployment) => match access::covers(&caller, &deployment.hosts, "this deployment") {
            Ok(()) => Json(deployment.view()).into_response(),
            Err(denied) => denied.into_response(),
        },
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

/// Middleware: a request whose `Host` is not allowed (`http.allowed_hosts`,
/// DNS rebinding) gets 421 before any handler runs. The health check is
/// exempt (load balancers probe by address, and it tells nothing).
pub async fn check_host(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if request.uri().path() != "/api/websocket/health" && !state.origins.host_allowed(host) {
        state.stats.origin_refused.inc();
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::Unauthorized,
            "This Host is not served here: add it to http.allowed_hosts",
        );
    }
    next.run(request).await
}
