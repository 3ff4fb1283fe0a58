//! The agent uplink: a QUIC endpoint (quinn, rustls with ring, TLS 1.3,
//! ALPN `o1/1`) where agents push batches.
//!
//! Per connection: the agent opens one bidirectional stream and sends
//! `Hello`; the relay checks the token and answers `Welcome` or `Refused`
//! (then closes with [`close_code::UNAUTHORIZED`]). Then `Batch` frames
//! flow in and cumulative `Ack` frames flow back: `Ack { sequence: n }`
//! means every batch up to `n` has been routed. A batch whose sequence is
//! not above the agent's high-water mark is a duplicate (a resend after a
//! lost ack): it is acked again and not routed.
//!
//! Failures (bad TLS, wrong ALPN, bad credentials, frames that do not
//! decode) close only that connection, with a reason; each kind is counted
//! in the stats and logged at most once a minute.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use o1_common::Timestamp;
use o1_common::wire::{self, Credentials, Hello};
use quinn::VarInt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::auth::{Credential, Role, Scope};

pub mod session;

use session::{HighWater, Input, ProtocolError, Refusal, UplinkSession, check_hello};
pub use session::{MAX_APPLICATIONS_PER_HOST, MAX_HOST_BYTES, MAX_NAME_BYTES, valid_name};

/// QUIC application close codes of the uplink.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    /// Credentials refused.
    pub const UNAUTHORIZED: u32 = 1;
    /// A frame did not decode, or broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 2;
    /// The relay is shutting down.
    pub const SHUTTING_DOWN: u32 = 3;
}

/// Agent ids whose high-water mark is kept before idle ones are pruned.
const HIGH_WATER_AGENTS: usize = 100_000;

/// How long an agent has to open its stream and say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("cannot read private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
}

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The endpoint configuration, with a stateless-reset key and a
/// connection-id key derived from the relay's private key: stable across
/// restarts, so after a crash the
/// restarted relay answers an agent's packets for its old connection with
/// a reset the agent recognises, and the agent reconnects at once instead
/// of waiting for its idle timeout.
pub fn endpoint_config(key: &Path) -> Result<quinn::EndpointConfig, TlsSetupError> {
    let pem = std::fs::read(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"o1 uplink stateless reset v1\0");
    context.update(&pem);
    let secret = context.finish();
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids carry a hash that the endpoint checks before it
    // answers a packet; with a key of its own per start, a restarted relay
    // would drop the agents' packets as forged instead of resetting them.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// Builds the QUIC server configuration from PEM files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::Certificate {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Certificate {
            path: cert.display().to_string(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        // Mutual TLS is optional per agent: one with a certificate of this
        // CA is known by it; one without still presents a token.
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(read_roots(ca)?),
                crypto_provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsSetupError::Certificate {
                path: ca.display().to_string(),
                message: e.to_string(),
            })?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle_timeout)
                .map_err(|e| TlsSetupError::Quic(e.to_string()))?,
        ))
        .keep_alive_interval(Some(idle_timeout / 3))
        // One stream per agent: the protocol needs no more, and each one
        // allowed is buffer memory a peer could claim before its hello.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The CA certificates of a PEM file.
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let error = |message: String| TlsSetupError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
        roots
            .add(cert.map_err(|e| error(e.to_string()))?)
            .map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    Ok(roots)
}

/// Logs each kind of failure at most once a minute, with how many similar
/// ones were not logged in between.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    /// Returns `Some(suppressed)` when this occurrence should be logged.
    pub fn should_log(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        let now = Instant::now();
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.duration_since(*last) < Duration::from_secs(60) => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

macro_rules! warn_limited {
    ($limiter:expr, $kind:literal, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.should_log($kind) {
            tracing::warn!(kind = $kind, suppressed_since_last = suppressed, $($arg)+);
        }
    };
}

/// State shared by every uplink connection.
#[derive(Debug)]
pub struct UplinkState {
    high_water: Mutex<HighWater>,
    log: LogLimiter,
    /// Connections accepted whose hello has not been authenticated yet.
    handshaking: std::sync::atomic::AtomicUsize,
}

impl UplinkState {
    /// With the high-water marks recovered from the history log: batches
    /// recorded before a crash are recognised when the agent resends them.
    fn recovered(marks: HashMap<String, u64>) -> Self {
        let state = UplinkState::default();
        {
            let mut high_water = state.high_water.lock();
            let now = Instant::now();
            for (agent_id, sequence) in marks {
                high_water.admit(&agent_id, sequence, now);
            }
        }
        state
    }
}

impl Default for UplinkState {
    fn default() -> Self {
        UplinkState {
            high_water: Mutex::new(HighWater::new(HIGH_WATER_AGENTS, Duration::from_secs(3600))),
            log: LogLimiter::default(),
            handshaking: Default::default(),
        }
    }
}

/// Counts one connection in handshake until dropped.
struct Handshaking<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("connection lost: {0}")]
    Lost(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("relay shutting down")]
    Shutdown,
    #[error("the relay cannot record batches: {0}")]
    Storage(String),
}

impl From<wire::FrameError> for End {
    fn from(error: wire::FrameError) -> Self {
        End::Protocol(error.into())
    }
}

/// Accepts agents until `shutdown`, then closes the endpoint.
pub async fn serve(endpoint: quinn::Endpoint, state: AppState, shutdown: CancellationToken) {
    let uplink = Arc::new(UplinkState::recovered(state.hub.take_high_water()));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        if state.stats.agents_connected.get() as usize >= state.config.uplink.max_agents {
            warn_limited!(uplink.log, "too_many_agents", remote = %incoming.remote_address(), "agent refused: uplink.max_agents reached");
            incoming.refuse();
            continue;
        }
        let handshaking = uplink
            .handshaking
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if handshaking >= state.config.uplink.max_handshaking {
            uplink
                .handshaking
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            state.stats.uplink_handshake_failures.inc();
            warn_limited!(uplink.log, "too_many_handshaking", remote = %incoming.remote_address(), "agent refused: uplink.max_handshaking connections are still in their handshake");
            incoming.refuse();
            continue;
        }
        let state = state.clone();
        let uplink = uplink.clone();
        state.tracker.clone().spawn(async move {
            handle_connection(incoming, state, uplink).await;
        });
    }
    endpoint.close(
        VarInt::from_u32(close_code::SHUTTING_DOWN),
        b"relay shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn handle_connection(incoming: quinn::Incoming, state: AppState, uplink: Arc<UplinkState>) {
    let handshaking = Handshaking(&uplink.handshaking);
    let remote = incoming.remote_address();
    let connection = match incoming.accept() {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let connection = match connection {
        Ok(connection) => connection,
        Err(error) => {
            state.stats.uplink_handshake_failures.inc();
            warn_limited!(uplink.log, "handshake", %remote, %error, "uplink handshake failed");
            return;
        }
    };
    let (mut send, mut recv) =
        match tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "agent left before opening its stream");
                return;
            }
            Err(_) => {
                let end = End::Protocol(ProtocolError::NoStream);
                return ended(&state, &uplink, &connection, remote, end);
            }
        };
    let mut session = UplinkSession::new(state.config.uplink.max_frame_bytes);
    let mut buffer = vec![0u8; 4 * 1024];
    let hello = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_hello(&mut recv, &mut buffer, &mut session),
    )
    .await
    {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return,
        Ok(Err(end)) => return ended(&state, &uplink, &connection, remote, end),
        Err(_) => {
            let end = End::Protocol(ProtocolError::NoHello);
            return ended(&state, &uplink, &connection, remote, end);
        }
    };
    let credential = match check_hello(&hello)
        .and_then(|()| authenticate(&state, &connection, remote, &hello))
    {
        Ok(credential) => credential,
        Err(refusal) => {
            state.stats.uplink_auth_failures.inc();
            // Debug formatting: a name from the network never forges a line.
            warn_limited!(uplink.log, "auth", %remote, host = ?hello.host, agent_id = ?hello.agent_id, reason = %refusal, "agent refused");
            if let Ok(frame) = session.refuse(&refusal) {
                let _ = send.write_all(&frame).await;
                let _ = send.finish();
            }
            // Give the refusal a moment to leave before the close overtakes it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            connection.close(
                VarInt::from_u32(close_code::UNAUTHORIZED),
                refusal.to_string().as_bytes(),
            );
            return;
        }
    };
    if let Some(trouble) = state.hub.cluster().and_then(|c| c.trouble()) {
        // Nothing could be acked here: the agent keeps its spool and tries
        // its next relay.
        warn_limited!(uplink.log, "degraded", %remote, host = ?hello.host, %trouble, "agent turned away: the cluster is unavailable");
        connection.close(
            VarInt::from_u32(close_code::SHUTTING_DOWN),
            format!("relay degraded: {trouble}").as_bytes(),
        );
        return;
    }
    match session.welcome(&hello) {
        Ok(frame) if send.write_all(&frame).await.is_ok() => {}
        _ => return,
    }
    drop(handshaking);
    buffer.resize(64 * 1024, 0);
    tracing::info!(%remote, host = ?hello.host, agent_id = ?hello.agent_id, version = ?hello.agent_version, credential = %credential.name, role = %credential.role, "agent connected");
    state.stats.agents_connected.inc();
    state.inventory.connected(
        &hello.host,
        &hello.agent_id,
        &hello.agent_version,
        &hello.applications,
        Timestamp::now(),
    );
    if let Some(cluster) = state.hub.cluster() {
        cluster.host_changed(&hello.host);
    }
    let end = tokio::select! {
        end = ingest(&mut send, &mut recv, &mut buffer, &mut session, (&hello, &credential), &state, &uplink) => end,
        _ = state.shutdown.cancelled() => Err(End::Shutdown),
    };
    match end {
        Ok(()) => connection.close(VarInt::from_u32(close_code::NORMAL), b"bye"),
        Err(end) => ended(&state, &uplink, &connection, remote, end),
    }
    state.stats.agents_connected.dec();
    state.inventory.disconnected(&hello.host, Timestamp::now());
    if let Some(cluster) = state.hub.cluster() {
        cluster.host_changed(&hello.host);
    }
    tracing::info!(%remote, host = ?hello.host, "agent disconnected");
}

/// Closes the connection as `end` says (a lost one is just logged).
fn ended(
    state: &AppState,
    uplink: &UplinkState,
    connection: &quinn::Connection,
    remote: SocketAddr,
    end: End,
) {
    let reason = end.to_string();
    match end {
        End::Lost(_) => tracing::debug!(%remote, %reason, "agent connection lost"),
        End::Shutdown | End::Storage(_) => connection.close(
            VarInt::from_u32(close_code::SHUTTING_DOWN),
            reason.as_bytes(),
        ),
        End::Protocol(_) => {
            state.stats.uplink_protocol_errors.inc();
            warn_limited!(uplink.log, "protocol", %remote, %reason, "uplink connection closed for a protocol error");
            connection.close(
                VarInt::from_u32(close_code::PROTOCOL_ERROR),
                reason.as_bytes(),
            );
        }
    }
}

/// Who the agent is: its client certificate's host (mutual TLS), or its
/// token's credential, which must allow pushing as `hello.host`.
fn authenticate(
    state: &AppState,
    connection: &quinn::Connection,
    remote: SocketAddr,
    hello: &Hello,
) -> Result<Credential, Refusal> {
    if let Some(chain) = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        && let Some(leaf) = chain.first()
    {
        // The TLS handshake verified the chain against `uplink.client_ca`;
        // the certificate names the one host this agent may be.
        let names_host = webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| {
            rustls::pki_types::ServerName::try_from(hello.host.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        if !names_host {
            return Err(Refusal::CertificateHost(hello.host.clone()));
        }
        return Ok(Credential {
            name: Arc::from(format!("certificate:{}", hello.host)),
            role: Role::Agent,
            scope: Arc::new(Scope::exactly(&hello.host)),
        });
    }
    let token = match &hello.credentials {
        Credentials::Token(token) => token,
        Credentials::ClientCertificate if state.config.uplink.client_ca.is_some() => {
            return Err(Refusal::NoClientCertificate);
        }
        Credentials::ClientCertificate => return Err(Refusal::ClientCertificatesDisabled),
    };
    let credential =
        crate::api::access::verify(state, token, remote.ip()).map_err(|denied| match denied {
            crate::api::access::Denied::Blocked(seconds) => Refusal::TooManyFailures(seconds),
            _ => Refusal::InvalidToken,
        })?;
    if !credential.may_push() {
        return Err(Refusal::Role(credential.role.to_string()));
    }
    if !credential.scope.allows(&hello.host) {
        return Err(Refusal::HostNotAllowed(hello.host.clone()));
    }
    Ok(credential)
}

/// Reads more of the stream into the session: the one read loop of the
/// uplink. `Ok(false)`: the stream ended cleanly.
async fn read_more(
    recv: &mut quinn::RecvStream,
    buffer: &mut [u8],
    session: &mut UplinkSession,
) -> Result<bool, End> {
    match recv.read(buffer).await {
        Ok(Some(n)) => {
            session.feed(&buffer[..n]);
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(End::Lost(e.to_string())),
    }
}

/// Reads until the hello. `Ok(None)`: the stream ended first.
async fn read_hello(
    recv: &mut quinn::RecvStream,
    buffer: &mut [u8],
    session: &mut UplinkSession,
) -> Result<Option<Hello>, End> {
    loop {
        // Before the hello no batch is admitted (it is an error).
        match session.next_input(&mut |_, _| false)? {
            Some(Input::Hello(hello)) => return Ok(Some(hello)),
            Some(Input::Batch { .. }) => return Err(ProtocolError::BatchBeforeHello.into()),
            None => {}
        }
        if !read_more(recv, buffer, session).await? {
            return Ok(None);
        }
    }
}

async fn ingest(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    buffer: &mut [u8],
    session: &mut UplinkSession,
    (hello, credential): (&Hello, &Credential),
    state: &AppState,
    uplink: &UplinkState,
) -> Result<(), End> {
    loop {
        let mut admit = |agent_id: &str, sequence| {
            uplink
                .high_water
                .lock()
                .admit(agent_id, sequence, Instant::now())
        };
        while let Some(input) = session.next_input(&mut admit)? {
            match input {
                Input::Batch { batch, new: true } => {
                    if let Err(error) = route(state, uplink, hello, credential, &batch).await {
                        // Not routed, not acked: forget it was seen, so the
                        // agent's resend is taken as new.
                        uplink
                            .high_water
                            .lock()
                            .rollback(&hello.agent_id, batch.sequence);
                        tracing::error!(%error, host = ?hello.host, "batch not recorded; closing the agent's connection (it will resend)");
                        return Err(End::Storage(error.to_string()));
                    }
                }
                Input::Batch { new: false, .. } => {
                    state.stats.duplicate_batches.inc();
                }
                Input::Hello(_) => return Err(ProtocolError::HelloTwice.into()),
            }
        }
        if let Some(ack) = session.take_ack()? {
            send.write_all(&ack)
                .await
                .map_err(|e| End::Lost(e.to_string()))?;
        }
        if !read_more(recv, buffer, session).await? {
            return Ok(());
        }
    }
}

/// Whether a `publisher` on the uplink (`o1-agent deploy` with a publisher
/// token) may send `item`: deployment items only.
fn publishes(item: &wire::Item) -> bool {
    match item {
        wire::Item::Deployment(_) => true,
        wire::Item::Log(line) => line.deployment_id.is_some(),
        wire::Item::Metric(_) => false,
    }
}

/// Routes a new batch: inventory, then the hub. Items of applications over
/// the host's limit are refused and counted; so are a publisher's items
/// that belong to no deployment.
async fn route(
    state: &AppState,
    uplink: &UplinkState,
    hello: &Hello,
    credential: &Credential,
    batch: &wire::Batch,
) -> Result<(), crate::journal::AppendError> {
    let owned;
    let batch = if credential.role == Role::Publisher && !batch.items.iter().all(publishes) {
        let items: Vec<wire::Item> = batch
            .items
            .iter()
            .filter(|i| publishes(i))
            .cloned()
            .collect();
        let refused = batch.items.len() - items.len();
        state.stats.processing_errors.inc_by(refused as u64);
        warn_limited!(uplink.log, "publisher_items", host = ?hello.host, refused, "a publisher token sent metrics or plain log lines: refused (publishers send deployment items only; agents need an agent token)");
        owned = wire::Batch {
            items,
            ..batch.clone()
        };
        &owned
    } else {
        batch
    };
    let ingested_at = Instant::now();
    let now = Timestamp::now();
    let mut applications: Vec<&str> = batch
        .items
        .iter()
        .filter_map(|item| match item {
            wire::Item::Metric(m) => Some(m.application.as_str()),
            wire::Item::Log(l) => Some(l.application.as_str()),
            wire::Item::Deployment(_) => None,
        })
        .collect();
    applications.sort_unstable();
    applications.dedup();
    let refused = state.inventory.seen(
        &hello.host,
        applications.into_iter(),
        now,
        MAX_APPLICATIONS_PER_HOST,
    );
    let admitted: std::borrow::Cow<'_, [wire::Item]> = if refused.is_empty() {
        std::borrow::Cow::Borrowed(&batch.items)
    } else {
        batch
            .items
            .iter()
            .filter(|item| match item {
                wire::Item::Metric(m) => !refused.contains(&m.application),
                wire::Item::Log(l) => !refused.contains(&l.application),
                wire::Item::Deployment(_) => true,
            })
            .cloned()
            .collect()
    };
    state
        .hub
        .append_batch(
            &hello.host,
            &hello.agent_id,
            batch.sequence,
            &admitted,
            &credential.scope,
            ingested_at,
            now,
        )
        .await?;
    let refused_items = batch.items.len() - admitted.len();
    if refused_items > 0 {
        state.stats.processing_errors.inc_by(refused_items as u64);
        warn_limited!(uplink.log, "applications", host = ?hello.host, refused_items, "items of applications over the limit (or with invalid names) refused: at most 256 applications of 1-256 bytes per host");
    }
    state.stats.batches_ingested.inc();
    if batch.dropped_items > 0 {
        state.stats.agent_dropped_items.inc_by(batch.dropped_items);
        tracing::warn!(host = ?hello.host, dropped = batch.dropped_items, "agent reports items dropped from a full spool");
    }
    Ok(())
}
