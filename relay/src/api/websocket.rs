//! The WebSocket API: one task per connection, reading client messages and
//! writing what the hub queued for it.
//!
//! Protections, all configured in `[websocket]`: a connection limit in total
//! and per client address (refused with `connection_failed`, then close
//! 1013), a per-connection token bucket for client messages (excess gets
//! `rate_limit_exceeded`; persistent abuse closes with 1008), a maximum
//! message size (close 1009), a subscription limit (`subscription_failed`),
//! server pings that drop dead peers, and the bounded outbound queue of
//! [`crate::hub::outbound`] (stalled readers close with 4008).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use o1_common::Timestamp;
use o1_common::api::{Dropped, ErrorCode, ErrorMessage, RequestId, ServerMessage};
use serde_json::json;

use crate::AppState;
use crate::hub::outbound::{Outbound, Outgoing, subscription_name};
use crate::hub::{SubscribeError, SubscriptionHandle};

use super::session::{
    Action, Frame, Subscribe, Tick, WsSession, subscribed_ack, subscription_failed,
};

pub use super::session::{MAX_ID_BYTES, MAX_NAME_BYTES, MAX_SEARCH_BYTES, close_code};

/// The address limits apply to: IPv4 as it is, IPv6 by its /64 (one host
/// or customer usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
pub fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the nearest address in `Forwarded` (or else `X-Forwarded-For`) that is
/// not itself a trusted proxy.
pub fn client_address(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = headers
        .get_all(axum::http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.eq_ignore_ascii_case("for").then(|| parse_node(value))?
            })
        })
        .collect();
    if chain.is_empty() {
        chain = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_node)
            .collect();
    }
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// An address in `Forwarded`/`X-Forwarded-For`: `192.0.2.1`,
/// `192.0.2.1:80`, `"[2001:db8::1]:80"`, `2001:db8::1`; `unknown` and
/// obfuscated names are `None`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.rsplit_once(':')?.0.parse().ok()
}

/// Connections, subscriptions and queued bytes held by one client address.
#[derive(Debug, Clone)]
struct Held {
    connections: usize,
    subscriptions: usize,
    bytes: Arc<crate::hub::outbound::AddressBudget>,
}

/// Counts connections in total and, with subscriptions, per client
/// address ([`client_key`]).
#[derive(Debug)]
pub struct ConnectionGate {
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, Held>>,
    max_total: usize,
    max_per_address: usize,
    max_subscriptions_per_address: usize,
    max_bytes_per_address: usize,
}

/// Held while a connection is open; releases its slot (and its
/// subscriptions' share of the address budget) when dropped.
#[derive(Debug)]
pub struct GatePermit {
    gate: Arc<ConnectionGate>,
    address: IpAddr,
    subscriptions: usize,
    /// The address's queued-bytes budget, shared by its connections.
    bytes: Arc<crate::hub::outbound::AddressBudget>,
}

impl ConnectionGate {
    pub fn new(
        max_total: usize,
        max_per_address: usize,
        max_subscriptions_per_address: usize,
        max_bytes_per_address: usize,
    ) -> Self {
        ConnectionGate {
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            max_total,
            max_per_address,
            max_subscriptions_per_address,
            max_bytes_per_address,
        }
    }

    fn held(&self) -> Held {
        Held {
            connections: 0,
            subscriptions: 0,
            bytes: Arc::new(crate::hub::outbound::AddressBudget {
                queued: AtomicUsize::new(0),
                max: self.max_bytes_per_address,
            }),
        }
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn is_full(&self) -> bool {
        self.open() >= self.max_total
    }

    fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Result<GatePermit, GateFull> {
        let address = client_key(address);
        let mut per_address = self.per_address.lock();
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(GateFull::Total(self.max_total));
        }
        let held = per_address.entry(address).or_insert_with(|| self.held());
        if held.connections >= self.max_per_address {
            return Err(GateFull::PerAddress(address, self.max_per_address));
        }
        held.connections += 1;
        let bytes = held.bytes.clone();
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(GatePermit {
            gate: self.clone(),
            address,
            subscriptions: 0,
            bytes,
        })
    }
}

/// Why a connection is refused (told to the client in `connection_failed`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateFull {
    #[error("Too many connections: the relay's limit of {0} is reached")]
    Total(usize),
    #[error("Too many connections from {0}: the limit is {1} per address")]
    PerAddress(IpAddr, usize),
}

impl GatePermit {
    /// Takes one subscription from the address's budget; `false` when it
    /// is spent.
    fn add_subscription(&mut self) -> bool {
        let mut per_address = self.gate.per_address.lock();
        let held = per_address
            .entry(self.address)
            .or_insert_with(|| self.gate.held());
        if held.subscriptions >= self.gate.max_subscriptions_per_address {
            return false;
        }
        held.subscriptions += 1;
        self.subscriptions += 1;
        true
    }

    /// Gives one subscription back.
    fn remove_subscription(&mut self) {
        let mut per_address = self.gate.per_address.lock();
        if let Some(held) = per_address.get_mut(&self.address) {
            held.subscriptions = held.subscriptions.saturating_sub(1);
        }
        self.subscriptions = self.subscriptions.saturating_sub(1);
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let mut per_address = self.gate.per_address.lock();
        if let Some(held) = per_address.get_mut(&self.address) {
            held.connections = held.connections.saturating_sub(1);
            held.subscriptions = held.subscriptions.saturating_sub(self.subscriptions);
            if held.connections == 0 {
                per_address.remove(&self.address);
            }
        }
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /api/websocket`. Refused before the upgrade: an `Origin` not
/// allowed (403), a bad `Authorization: Bearer` (401), a token that may
/// not read (403).
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    direct: Option<axum::Extension<crate::api::http_server::DirectSocket>>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    use axum::response::IntoResponse;
    let direct = direct.and_then(|axum::Extension(d)| d.0);
    let client = client_address(peer.ip(), &headers, &state.config.http.trusted_proxies);
    let peer = SocketAddr::new(client, peer.port());
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
    };
    if !state.origins.origin_allowed(
        header(axum::http::header::ORIGIN),
        header(axum::http::header::HOST),
    ) {
        state.stats.origin_refused.inc();
        if let Some(suppressed) = state.log_limiter.should_log("websocket_origin") {
            tracing::warn!(origin = ?header(axum::http::header::ORIGIN), %peer, suppressed_since_last = suppressed, "websocket upgrade refused: Origin not in http.allowed_origins");
        }
        return crate::api::access::Denied::Forbidden(
            "This Origin may not open the WebSocket: add it to http.allowed_origins".into(),
        )
        .into_response();
    }
    let credential = match crate::api::access::presented(&state, &headers, client) {
        Ok(Some(credential)) if credential.may_read() => Some(credential),
        Ok(Some(credential)) => {
            return crate::api::access::Denied::cannot_read(credential.role).into_response();
        }
        Ok(None) if state.config.auth.browsers == crate::config::BrowserAccess::Open => {
            Some(crate::auth::Credential::open_reader())
        }
        Ok(None) => None,
        Err(denied) => return denied.into_response(),
    };
    let ws = &state.config.websocket;
    let upgrade = upgrade
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_message_size(ws.max_message_bytes)
        .max_frame_size(ws.max_message_bytes);
    let permit = state.gate.try_acquire(peer.ip());
    let tracker = state.tracker.clone();
    upgrade.on_upgrade(move |socket| {
        tracker.track_future(async move {
            match permit {
                Ok(permit) => serve(socket, state, (peer, direct), permit, credential).await,
                Err(full) => refuse(socket, &state, full.to_string()).await,
            }
        })
    })
}

fn encode(message: &ServerMessage) -> Bytes {
    Bytes::from(message.to_json())
}

/// How long a close the relay starts waits for the client: to write what
/// was queued and the close frame, then to read the client's answer.
const LINGER: Duration = Duration::from_secs(2);

/// After the relay sent its close frame: reads (and discards) what the
/// client still sends until its close frame or end of stream, within
/// [`LINGER`]. Closing a socket with unread input makes the kernel answer
/// with a reset, and the client would lose the queued replies and the
/// close frame with its code and reason.
async fn linger<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn refuse(mut socket: WebSocket, state: &AppState, reason: String) {
    state.stats.connections_refused.inc();
    if let Some(suppressed) = state.log_limiter.should_log("websocket_refused") {
        tracing::warn!(%reason, suppressed_since_last = suppressed, "websocket connection refused (logged at most once a minute)");
    }
    let error = ServerMessage::Error(ErrorMessage::new(
        ErrorCode::ConnectionFailed,
        reason,
        Timestamp::now(),
    ));
    let _ = socket.send(Message::Text(error.to_json().into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::TRY_AGAIN_LATER,
            reason: Utf8Bytes::from_static("connection limit reached"),
        })))
        .await;
    linger(&mut socket).await;
}

/// How the reading half ended.
enum ReadEnd {
    /// The client closed or the socket failed: nothing more to send.
    Gone,
    /// The relay closes the connection with this code and reason.
    Close(u16, String),
}

/// The driver's half of a connection: what the session's actions need.
struct Connection {
    session: WsSession,
    permit: GatePermit,
    /// The client's address (failed authentications count against it).
    client: IpAddr,
    /// This connection's subscriptions in the hub, by id.
    handles: Vec<SubscriptionHandle>,
}

impl Connection {
    /// Does what the session decided.
    async fn act(
        &mut self,
        actions: Vec<Action>,
        outbound: &Arc<Outbound>,
        state: &AppState,
    ) -> Option<ReadEnd> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Reply(message) => outbound.push_reply(Outgoing::reply(encode(&message))),
                Action::Subscribe {
                    subscribe,
                    request_id,
                } => self.subscribe(subscribe, request_id, outbound, state).await,
                Action::Unsubscribe(id) => {
                    if let Some(position) = self.handles.iter().position(|h| h.id == id) {
                        let handle = self.handles.swap_remove(position);
                        state.hub.unsubscribe(&handle);
                        self.permit.remove_subscription();
                        if self.handles.is_empty() {
                            state.stats.connections_active.dec();
                        }
                    }
                }
                Action::Close(code, reason) => return Some(ReadEnd::Close(code, reason)),
                Action::Authenticate { token, request_id } => {
                    let outcome = crate::api::access::verify(state, &token, self.client);
                    if let Err(denied) = &outcome
                        && let Some(suppressed) = state.log_limiter.should_log("websocket_auth")
                    {
                        tracing::warn!(client = %self.client, reason = %denied, suppressed_since_last = suppressed, "websocket authentication failed");
                    }
                    let more = self
                        .session
                        .authentication(outcome, request_id, Timestamp::now());
                    for (i, action) in more.into_iter().enumerate() {
                        queue.insert(i, action);
                    }
                }
            }
        }
        None
    }

    async fn subscribe(
        &mut self,
        subscribe: Subscribe,
        request_id: Option<RequestId>,
        outbound: &Arc<Outbound>,
        state: &AppState,
    ) {
        let now = Timestamp::now();
        let refuse =
            |error| outbound.push_reply(Outgoing::reply(encode(&ServerMessage::Error(error))));
        if !self.permit.add_subscription() {
            let limit = state.config.websocket.max_subscriptions_per_address;
            refuse(subscription_failed(
                format!("Subscription limit reached: at most {limit} per client address"),
                json!({ "limit": limit }),
                request_id.as_ref(),
                now,
            ));
            return;
        }
        let epoch = state.hub.epoch();
        let ack = |id: u64| {
            Outgoing::reply(encode(&subscribed_ack(
                id,
                request_id.clone(),
                epoch,
                Timestamp::now(),
            )))
        };
        // The hosts this client may see; `None` (no check) for every host.
        let scope = self
            .session
            .credential()
            .map(|c| c.scope.clone())
            .filter(|s| !s.is_all());
        let handle = match &subscribe {
            Subscribe::Deployment {
                deployment_id,
                since,
            } => {
                match state
                    .hub
                    .subscribe_deployment(deployment_id, *since, scope, outbound, ack)
                {
                    Ok(handle) => handle,
                    Err(error) => {
                        self.permit.remove_subscription();
                        let mut error = match error {
                            SubscribeError::DeploymentNotFound => subscription_failed(
                                error.to_string(),
                                json!({ "deploymentId": deployment_id }),
                                request_id.as_ref(),
                                now,
                            ),
                            SubscribeError::Forbidden => super::session::error(
                                ErrorCode::Unauthorized,
                                error.to_string(),
                                request_id.as_ref(),
                                now,
                            ),
                        };
                        error.details = Some(json!({ "deploymentId": deployment_id }));
                        refuse(error);
                        return;
                    }
                }
            }
            Subscribe::Logs { request, replay } => match request.since {
                // Boxed: a replay's state (readers, records in flight) is
                // allocated when a `since` arrives, not in every
                // connection's task (an idle connection's size).
                Some(since) => {
                    Box::pin(crate::hub::resume::subscribe_logs_since(
                        &state.hub, request, since, scope, outbound, ack,
                    ))
                    .await
                }
                None => state
                    .hub
                    .subscribe_logs(request, scope, outbound, ack, *replay),
            },
            Subscribe::Metrics { request } => {
                state.hub.subscribe_metrics(request, scope, outbound, ack)
            }
        };
        if self.session.subscribed(handle.id) {
            state.stats.connections_active.inc();
        }
        self.handles.push(handle);
    }
}

async fn serve(
    socket: WebSocket,
    state: AppState,
    (peer, direct): (SocketAddr, Option<Arc<std::net::TcpStream>>),
    permit: GatePermit,
    credential: Option<crate::auth::Credential>,
) {
    let stats = state.stats.clone();
    stats.connection_opened();
    // Built in one expression: no local of the queue's size stays in this
    // task's future (a shadowed binding keeps its storage to the end of
    // the scope, across every await: per idle connection).
    let outbound = Arc::new({
        let queue = Outbound::new(state.config.websocket.outbound_limits(), stats.clone())
            .with_address_budget(permit.bytes.clone());
        // The extension's copy is shared with the request; the
        // connection's direct-write slot keeps its own descriptor (a
        // second `dup` only when both are alive).
        match direct.and_then(|socket| {
            Arc::try_unwrap(socket)
                .or_else(|shared| shared.try_clone())
                .ok()
        }) {
            Some(duplicate) => queue.with_direct(state.hub.claim_direct(duplicate)),
            None => queue,
        }
    });
    let (mut sink, mut stream) = socket.split();
    let mut connection = Connection {
        session: WsSession::new(state.config.session_limits(), credential),
        permit,
        client: peer.ip(),
        handles: Vec::new(),
    };
    let closing = {
        let writer = write_loop(&mut sink, &outbound, &state);
        let reader = read_loop(&mut stream, &outbound, &mut connection, &state);
        tokio::pin!(writer, reader);
        tokio::select! {
            _ = &mut writer => false,
            end = &mut reader => {
                if let ReadEnd::Close(code, reason) = end {
                    tracing::debug!(%peer, code, %reason, "closing websocket");
                    outbound.close(code, reason);
                    tokio::time::timeout(LINGER, &mut writer).await.is_ok()
                } else {
                    false
                }
            }
        }
    };
    if closing {
        linger(&mut stream).await;
    }
    // Before the socket goes: the router writes to it no more.
    outbound.clear_direct();
    for handle in &connection.handles {
        state.hub.unsubscribe(handle);
    }
    if !connection.handles.is_empty() {
        stats.connections_active.dec();
    }
    stats.connection_closed();
}

async fn write_loop(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    outbound: &Outbound,
    state: &AppState,
) {
    let mut latencies: Vec<u64> = Vec::new();
    let mut ingested: Vec<Instant> = Vec::new();
    loop {
        let drained = outbound.next().await;
        // The rest of a frame the router began writing goes first.
        // Boxed: rare, and its timer would otherwise sit in every
        // connection's task.
        if let Some(raw) = &drained.raw
            && !Box::pin(outbound.write_raw(raw)).await
        {
            return;
        }
        let mut sent = 0u64;
        for message in &drained.messages {
            if sink
                .feed(Message::Text(message.to_text().into()))
                .await
                .is_err()
            {
                return;
            }
            sent += 1;
            if let Some(at) = message.ingested_at {
                ingested.push(at);
            }
        }
        for (subscription, count) in &drained.dropped {
            let notice = ServerMessage::Dropped(Dropped {
                subscription_id: subscription_name(*subscription),
                count: *count,
                timestamp: Timestamp::now(),
            });
            if sink
                .feed(Message::Text(notice.to_json().into()))
                .await
                .is_err()
            {
                return;
            }
            sent += 1;
        }
        if drained.ping && sink.feed(Message::Ping(Bytes::new())).await.is_err() {
            return;
        }
        if let Some((code, reason)) = drained.close {
            let _ = sink.flush().await;
            state.stats.messages_sent.inc_by(sent);
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
            outbound.written();
            return;
        }
        if sink.flush().await.is_err() {
            return;
        }
        outbound.written();
        state.stats.messages_sent.inc_by(sent);
        if !ingested.is_empty() {
            let now = Instant::now();
            latencies.extend(
                ingested
                    .drain(..)
                    .map(|at| now.saturating_duration_since(at).as_micros() as u64),
            );
            state.stats.record_latencies(&latencies);
            latencies.clear();
        }
    }
}

/// Whether a read failed because the client's message is over
/// `websocket.max_message_bytes` (tungstenite's capacity error).
fn is_too_big(error: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    let source = std::error::Error::source(error);
    matches!(
        source.and_then(|e| e.downcast_ref::<Error>()),
        Some(Error::Capacity(
            CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders
        ))
    )
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    outbound: &Arc<Outbound>,
    connection: &mut Connection,
    state: &AppState,
) -> ReadEnd {
    let every = connection.session.tick_every();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let actions = tokio::select! {
            _ = state.shutdown.cancelled() => {
                return ReadEnd::Close(close_code::GOING_AWAY, "server shutting down".into());
            }
            _ = tick.tick() => {
                match connection.session.tick(outbound.is_stalled(Instant::now())) {
                    Tick::Nothing => {}
                    Tick::Ping => outbound.push_ping(),
                    Tick::Dead => {
                        tracing::debug!("websocket peer silent past the ping timeout; dropping");
                        return ReadEnd::Gone;
                    }
                    Tick::Close(code, reason) => {
                        state.stats.slow_readers_closed.inc();
                        return ReadEnd::Close(code, reason);
                    }
                }
                continue;
            }
            frame = stream.next() => {
                let message = match frame {
                    None => return ReadEnd::Gone,
                    Some(Err(error)) => {
                        if is_too_big(&error) {
                            return ReadEnd::Close(
                                close_code::MESSAGE_TOO_BIG,
                                format!("message too big: the limit is {} bytes", state.config.websocket.max_message_bytes),
                            );
                        }
                        tracing::debug!(%error, "websocket read failed");
                        return ReadEnd::Gone;
                    }
                    Some(Ok(message)) => message,
                };
                let frame = match &message {
                    Message::Text(text) => Frame::Text(text.as_str()),
                    Message::Binary(_) => Frame::Binary,
                    Message::Ping(_) | Message::Pong(_) => Frame::Control,
                    Message::Close(_) => return ReadEnd::Gone,
                };
                let before = connection.session.counted;
                let actions = connection.session.receive(frame, Timestamp::now());
                let after = connection.session.counted;
                state.stats.messages_received.inc_by(after.received - before.received);
                state.stats.invalid_messages.inc_by(after.invalid - before.invalid);
                state.stats.rate_limited.inc_by(after.rate_limited - before.rate_limited);
                actions
            }
        };
        // Boxed: what a message makes the relay do (subscriptions, replays)
        // is allocated per message, not kept in every idle connection.
        if let Some(end) = Box::pin(connection.act(actions, outbound, state)).await {
            return end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = axum::http::HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, value.parse().unwrap());
            }
            map
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // (peer, headers, the client it stands for)
        type Case<'a> = (&'a str, &'a [(&'static str, &'a str)], &'a str);
        let table: &[Case] = &[
            (
                "203.0.113.9",
                &[("x-forwarded-for", "198.51.100.1")],
                "203.0.113.9",
            ),
            (
                "10.0.0.2",
                &[("x-forwarded-for", "198.51.100.1")],
                "198.51.100.1",
            ),
            (
                "10.0.0.2",
                &[("x-forwarded-for", "198.51.100.1, 10.0.0.7")],
                "198.51.100.1",
            ),
            (
                "10.0.0.2",
                &[("x-forwarded-for", "1.2.3.4, 198.51.100.1")],
                "198.51.100.1",
            ),
            (
                "10.0.0.2",
                &[("forwarded", "for=192.0.2.60;proto=http;by=10.0.0.2")],
                "192.0.2.60",
            ),
            (
                "10.0.0.2",
                &[("forwarded", "for=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::17",
            ),
            ("10.0.0.2", &[("forwarded", "for=unknown")], "10.0.0.2"),
            ("10.0.0.2", &[], "10.0.0.2"),
        ];
        for (peer, pairs, expected) in table {
            assert_eq!(
                client_address(ip(peer), &headers(pairs), &trusted),
                ip(expected),
                "{peer} {pairs:?}"
            );
        }
    }

    #[test]
    fn limits_count_ipv6_by_its_64_and_mapped_ipv4_as_ipv4() {
        let key = |text: &str| client_key(text.parse().unwrap());
        let table = [
            ("192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::"),
            ("2001:db8:1:2::1", "2001:db8:1:2::"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
        ];
        for (address, expected) in table {
            assert_eq!(
                key(address),
                expected.parse::<IpAddr>().unwrap(),
                "{address}"
            );
        }
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn the_address_budget_of_subscriptions_is_shared_and_given_back() {
        let gate = Arc::new(ConnectionGate::new(10, 10, 3, 1 << 20));
        let address: IpAddr = "2001:db8::1".parse().unwrap();
        let mut first = gate.try_acquire(address).unwrap();
        let mut second = gate.try_acquire("2001:db8::2".parse().unwrap()).unwrap();
        assert!(first.add_subscription() && first.add_subscription());
        assert!(second.add_subscription());
        assert!(!second.add_subscription(), "the /64 shares one budget");
        first.remove_subscription();
        assert!(second.add_subscription());
        drop(second);
        let mut third = gate.try_acquire(address).unwrap();
        assert!(third.add_subscription() && third.add_subscription());
        assert!(!third.add_subscription());
    }
}
