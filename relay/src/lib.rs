//! o1-relay: ingests agent batches over QUIC and serves the WebSocket API,
//! subscriptions, rate limiting and REST statistics.
//!
//! The folders follow the data: agents → [`ingest`] → [`hub`] → [`api`].
//!
//! - [`ingest`]: the QUIC endpoint agents push to; its protocol logic is
//!   the sans-IO [`ingest::session`].
//! - [`hub`]: routing of ingested items to subscriptions, recent history;
//!   [`hub::outbound`] is the bounded per-connection queue.
//! - [`api`]: the HTTP server, the WebSocket API (one task per connection,
//!   the sans-IO [`api::session`]) and REST.
//! - [`deployments`], [`inventory`]: deployment registry, host inventory
//!   (pure state; REST serves their views from `o1_common::rest`).
//! - [`telemetry`]: counters, gauges and latency histograms, `/metrics`.
//! - [`config`], [`auth`], [`certs`]: configuration, tokens, and the
//!   first-deployment certificates.

pub mod api;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod deployments;
pub mod hub;
pub mod ingest;
pub mod inventory;
pub mod journal;
pub mod prefetch;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::websocket::ConnectionGate;
use crate::auth::TokenVerifier;
use crate::config::RelayConfig;
use crate::hub::Hub;
use crate::inventory::Inventory;
use crate::telemetry::Stats;

/// Everything a request handler or connection task needs.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<RelayConfig>,
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub inventory: Arc<Inventory>,
    pub gate: Arc<ConnectionGate>,
    pub tokens: Arc<TokenVerifier>,
    /// Failed authentications per client address.
    pub failures: Arc<auth::FailureLimiter>,
    /// `Origin` and `Host` allow-lists.
    pub origins: Arc<api::origin::OriginPolicy>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Refusals and similar warnings: each kind at most once a minute.
    pub log_limiter: Arc<ingest::LogLimiter>,
}

impl AppState {
    /// Opens the history log (`history.dir`) and rebuilds the relay's state
    /// from it.
    pub fn new(
        config: RelayConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, store::StoreError> {
        let stats = Arc::new(Stats::new());
        let hub = Arc::new(if config.cluster.nats_url.is_some() {
            let name = config.cluster.name.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "relay".into());
                format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
            });
            Hub::clustered(
                stats.clone(),
                config.history.clone(),
                config.deployments,
                Arc::new(cluster::ClusterLink::new(config.cluster.clone(), name)),
            )
        } else if config.history.persist {
            Hub::open(
                stats.clone(),
                config.history.clone(),
                config.deployments,
                config.history.store_config(),
            )?
        } else {
            Hub::new(stats.clone(), config.history.clone(), config.deployments)
        });
        hub.set_fanout_threads(config.fanout_threads());
        Ok(AppState {
            gate: Arc::new(ConnectionGate::new(
                config.websocket.max_connections,
                config.websocket.max_connections_per_address,
                config.websocket.max_subscriptions_per_address,
                config.websocket.queue_bytes_per_address,
            )),
            tokens: Arc::new(config.auth.verifier()),
            failures: Arc::new(auth::FailureLimiter::new(config.auth.failures_per_minute)),
            origins: Arc::new(api::origin::OriginPolicy::new(
                &config.http.allowed_origins,
                config.http.allowed_hosts.as_deref(),
                config.http.listen.ip().is_loopback(),
            )),
            log_limiter: Arc::new(ingest::LogLimiter::default()),
            config: Arc::new(config),
            hub,
            stats,
            inventory: Arc::new(Inventory::default()),
            shutdown,
            tracker: TaskTracker::new(),
        })
    }
}

pub fn router(state: AppState) -> Router {
    let checked = axum::middleware::from_fn_with_state(state.clone(), api::rest::check_host);
    Router::new()
        .route("/api/websocket", get(api::websocket::upgrade))
        .route("/api/websocket/stats", get(api::rest::stats))
        .route("/api/websocket/metrics", get(api::rest::metrics))
        .route("/api/websocket/health", get(api::rest::health))
        .route("/metrics", get(api::rest::prometheus))
        .route("/api/hosts", get(api::rest::hosts))
        .route(
            "/api/deployments",
            get(api::rest::list_deployments).post(api::rest::create_deployment),
        )
        .route("/api/deployments/{id}", get(api::rest::get_deployment))
        .route(
            "/api/deployments/{id}/events",
            post(api::rest::deployment_event),
        )
        .route(
            "/api/deployments/{id}/cancel",
            post(api::rest::cancel_deployment),
        )
        .route("/api/openapi.json", get(api::openapi::document))
        .route("/", get(api::dashboard::page))
        .route("/logs", get(api::dashboard::page))
        .route("/deployments", get(api::dashboard::page))
        .route("/hosts/{host}", get(api::dashboard::page))
        .route("/deployments/{id}", get(api::dashboard::page))
        .route("/assets/{name}", get(api::dashboard::asset))
        .fallback(api::rest::not_found)
        .layer(checked)
        .with_state(state)
}

/// The relay's bound sockets: bound before `run`, so tests can use port 0
/// and read the addresses.
#[derive(Debug)]
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    /// The HTTPS certificate, when `http.tls_cert` is set.
    pub http_tls: Option<Arc<api::tls::ReloadableCert>>,
    pub uplink: Option<quinn::Endpoint>,
}

impl Listeners {
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }
    pub fn uplink_addr(&self) -> Option<SocketAddr> {
        self.uplink.as_ref().and_then(|e| e.local_addr().ok())
    }
}

/// Why the relay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {address} (http.listen): {source}")]
    Http {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "uplink TLS (uplink.cert / uplink.key / uplink.client_ca; `o1-relay certs` makes them): {0}"
    )]
    Tls(#[from] ingest::TlsSetupError),
    #[error("HTTPS (http.tls_cert / http.tls_key): {0}")]
    HttpTls(ingest::TlsSetupError),
    #[error("cannot listen on udp {address} (uplink.listen): {source}")]
    Uplink {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the HTTP listener and, when `with_uplink`, the QUIC endpoint.
pub async fn bind(config: &RelayConfig, with_uplink: bool) -> Result<Listeners, BindError> {
    let http_tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            api::tls::ReloadableCert::new(cert, key).map_err(BindError::HttpTls)?,
        )),
        _ => None,
    };
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| BindError::Http {
            address: config.http.listen,
            source,
        })?;
    let uplink = if with_uplink {
        let server = ingest::server_config(
            &config.uplink.cert,
            &config.uplink.key,
            config.uplink.client_ca.as_deref(),
            Duration::from_secs(config.uplink.idle_timeout_secs),
        )?;
        let endpoint_config = ingest::endpoint_config(&config.uplink.key)?;
        let uplink_error = |source| BindError::Uplink {
            address: config.uplink.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.uplink.listen).map_err(uplink_error)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(uplink_error)?;
        Some(endpoint)
    } else {
        None
    };
    Ok(Listeners {
        http,
        http_tls,
        uplink,
    })
}

/// SIGHUP reads the HTTPS certificate again (certbot's deploy hook; the
/// systemd unit's `ExecReload`). Without TLS there is nothing to reload,
/// and the signal is only logged (it must not end the relay).
async fn reload_on_hangup(
    cert: Option<Arc<api::tls::ReloadableCert>>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: certificates reload only on restart");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        match &cert {
            Some(cert) => match cert.reload() {
                Ok(()) => tracing::info!("SIGHUP: HTTPS certificate reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the HTTPS certificate did not load; the one in use stays")
                }
            },
            None => tracing::info!("SIGHUP: no HTTPS certificate to reload (http.tls_cert unset)"),
        }
    }
}

/// Says at start what access control allows, once: what an operator
/// should know before the first request.
fn warn_about_access(config: &RelayConfig, tokens: &TokenVerifier) {
    use crate::auth::Role;
    if !config.auth.token_sha256.is_empty() {
        tracing::warn!(
            tokens = config.auth.token_sha256.len(),
            "auth.token_sha256 is deprecated: those tokens are admin tokens (every role, every host); \
             give each holder an [[auth.token]] with a role and hosts (`o1-relay token create`)"
        );
    }
    if tokens.is_empty() && config.uplink.client_ca.is_none() {
        tracing::warn!(
            "no tokens configured ([[auth.token]]): every agent and REST publisher will be refused"
        );
    }
    match config.auth.browsers {
        config::BrowserAccess::Open => tracing::warn!(
            http = %config.http.listen,
            "auth.browsers = \"open\": anyone who reaches the HTTP port reads every host's logs and metrics"
        ),
        config::BrowserAccess::Token
            if tokens.count(Role::Reader) + tokens.count(Role::Admin) == 0 =>
        {
            tracing::warn!(
                "auth.browsers = \"token\" but no reader or admin token is configured: no browser can read"
            )
        }
        config::BrowserAccess::Token => {}
    }
    if config.http.allowed_hosts.is_none() && !config.http.listen.ip().is_loopback() {
        tracing::warn!(
            http = %config.http.listen,
            "http.allowed_hosts is not set on a non-loopback listener: any Host header is served \
             (DNS rebinding); list the names browsers use"
        );
    }
}

/// Serves until `shutdown` is cancelled, then drains: WebSocket clients get
/// a 1001 close, agents a QUIC close, and the call returns once every task
/// ended or `shutdown.grace_secs` passed.
pub async fn run(state: AppState, listeners: Listeners) {
    let shutdown = state.shutdown.clone();
    let tracker = state.tracker.clone();
    let grace = Duration::from_secs(state.config.shutdown.grace_secs);
    warn_about_access(&state.config, &state.tokens);
    // Deployments that stop reporting end as failed; hosts silent for
    // long leave the inventory.
    {
        let (hub, inventory, shutdown) =
            (state.hub.clone(), state.inventory.clone(), shutdown.clone());
        let every = Duration::from_secs(state.config.deployments.active_ttl_secs.clamp(1, 60));
        let forget_ms = (state.config.uplink.forget_hosts_after_secs as i64).saturating_mul(1000);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = o1_common::Timestamp::now();
                hub.append_expiries(now).await;
                let forgotten = inventory.forget_silent(o1_common::Timestamp::from_unix_millis(
                    now.unix_millis.saturating_sub(forget_ms),
                ));
                if forgotten > 0 {
                    tracing::info!(hosts = forgotten, "silent hosts left the inventory");
                }
            }
        });
    }
    // The history log reaches the disk every `fsync_interval_ms`; old
    // segments go by age here too.
    {
        let (hub, shutdown) = (state.hub.clone(), shutdown.clone());
        let every = hub
            .store()
            .map_or(Duration::from_secs(1), |s| s.fsync_interval())
            .max(Duration::from_millis(10));
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let hub = hub.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(store) = hub.store() {
                        store.sync();
                    }
                })
                .await;
            }
            if let Some(store) = hub.store() {
                store.sync();
            }
        });
    }
    if let Some(cluster) = state.hub.cluster() {
        tracker.spawn(cluster.clone().run(
            state.hub.clone(),
            state.inventory.clone(),
            state.config.history.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(endpoint) = listeners.uplink {
        tracker.spawn(ingest::serve(endpoint, state.clone(), shutdown.clone()));
    }
    let limits = api::http_server::HttpLimits {
        max_connections: state.config.http.max_connections,
        header_timeout: Duration::from_secs(state.config.http.header_timeout_secs),
    };
    let tls = match &listeners.http_tls {
        Some(cert) => match cert.server_config() {
            Ok(config) => Some(config),
            Err(error) => {
                tracing::error!(%error, "cannot configure HTTPS; not serving HTTP");
                return;
            }
        },
        None => None,
    };
    tracker.spawn(reload_on_hangup(
        listeners.http_tls.clone(),
        shutdown.clone(),
    ));
    let server = tokio::spawn(api::http_server::serve(
        listeners.http,
        router(state.clone()),
        limits,
        tls,
        state.stats.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining connections"
    );
    tracker.close();
    let drained = tokio::time::timeout(grace, async {
        tracker.wait().await;
        let _ = server.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; exiting with connections still open");
    }
}
