//! The WebSocket API of one connection, without I/O: client frames in,
//! [`Action`]s out. It applies the rate limit and its abuse rule, the size
//! and subscription limits and the `tail` replay budget, answers what needs
//! no hub (errors, `pong`, `unsubscribed`), and says when to ping or close.
//! The driver in [`super::websocket`] does what the actions say: replies
//! on the connection's queue, subscriptions in the hub.
//!
//! Time comes from a governor [`Clock`]: the real one in the relay, a fake
//! one in the tests, so every rule here is tested without waiting.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use o1_common::Timestamp;
use o1_common::api::{
    Authenticated, ClientMessage, DecodeError, ErrorCode, ErrorMessage, Pong, RequestId,
    ServerMessage, SubscribeLogs, SubscribeMetrics, SubscriptionAck,
};

use crate::api::access::Denied;
use crate::auth::Credential;
use serde_json::json;

use crate::hub::outbound::subscription_name;

/// Close codes used by the relay (RFC 6455 and private use).
pub mod close_code {
    /// The relay is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Persistent abuse of the rate limit.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A client message over `websocket.max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A connection limit is reached; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Authentication failed too often on this connection.
    pub const UNAUTHORIZED: u16 = 4001;
    pub use crate::hub::outbound::CLOSE_SLOW_READER as SLOW_READER;
}

/// Longest host or application name a subscription may name.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest `search` text.
pub const MAX_SEARCH_BYTES: usize = 1024;
/// Longest deployment or subscription id.
pub const MAX_ID_BYTES: usize = 256;

/// The limits of one connection (from `[websocket]` and `[history]`).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub messages_per_second: u32,
    pub burst: u32,
    /// Rate-limited messages within a minute that close the connection.
    pub abuse_limit: u32,
    pub max_subscriptions: usize,
    pub replay_lines_per_second: u32,
    pub replay_burst: u32,
    /// Most lines a `tail` can ask for (the history kept per source).
    pub max_tail: u32,
    pub ping_interval: Duration,
    /// Silence after a ping that makes the peer dead.
    pub ping_timeout: Duration,
    pub stall_timeout_secs: u64,
}

/// A frame from the client, as the session sees it.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Text(&'a str),
    Binary,
    /// Ping or pong: proof of life, and counted by the rate limit.
    Control,
}

/// A subscription the driver is to make in the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Subscribe {
    Deployment {
        deployment_id: String,
        since: Option<o1_common::api::Since>,
    },
    /// `replay`: lines of `tail` this connection's replay budget allows.
    Logs {
        request: SubscribeLogs,
        replay: usize,
    },
    Metrics {
        request: SubscribeMetrics,
    },
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue this reply.
    Reply(ServerMessage),
    /// Subscribe; the driver answers with [`WsSession::subscribed`] (the
    /// hub queues the `subscribed` ack built by [`subscribed_ack`]) or
    /// replies with an error.
    Subscribe {
        subscribe: Subscribe,
        request_id: Option<RequestId>,
    },
    /// Remove this subscription from the hub (the session already forgot
    /// it and queued `unsubscribed`).
    Unsubscribe(u64),
    /// Close with this code and reason.
    Close(u16, String),
    /// Check this token; the driver answers with
    /// [`WsSession::authentication`].
    Authenticate {
        token: String,
        request_id: Option<RequestId>,
    },
}

/// Failed `authenticate` messages one connection may send before it is
/// closed with 4001.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// What a tick found.
#[derive(Debug, Clone, PartialEq)]
pub enum Tick {
    Nothing,
    Ping,
    /// No frame since the ping timeout: drop the connection.
    Dead,
    /// The reader stalled: close with this code and reason.
    Close(u16, String),
}

/// Figures the driver adds to the relay's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counted {
    pub received: u64,
    pub invalid: u64,
    pub rate_limited: u64,
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One WebSocket connection's protocol state.
#[derive(Debug)]
pub struct WsSession<C: Clock + Clone = DefaultClock> {
    limits: SessionLimits,
    clock: C,
    messages: Limiter<C>,
    replay: Limiter<C>,
    /// Times of recent rate-limited messages, for the abuse rule.
    limited_at: std::collections::VecDeque<C::Instant>,
    /// Ids of this connection's subscriptions.
    subscriptions: Vec<u64>,
    last_inbound: C::Instant,
    last_ping: C::Instant,
    /// Who the client is: `None` until it authenticates (when the relay
    /// asks for a token).
    credential: Option<Credential>,
    auth_failures: u32,
    pub counted: Counted,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl WsSession<DefaultClock> {
    pub fn new(limits: SessionLimits, credential: Option<Credential>) -> Self {
        WsSession::with_clock(limits, DefaultClock::default(), credential)
    }
}

impl<C: Clock + Clone> WsSession<C> {
    /// `credential`: who the client already is (the open reader, or the
    /// bearer of the upgrade request); `None` asks it to authenticate.
    pub fn with_clock(limits: SessionLimits, clock: C, credential: Option<Credential>) -> Self {
        let now = clock.now();
        WsSession {
            messages: RateLimiter::direct_with_clock(
                quota(limits.messages_per_second, limits.burst),
                clock.clone(),
            ),
            replay: RateLimiter::direct_with_clock(
                quota(limits.replay_lines_per_second, limits.replay_burst),
                clock.clone(),
            ),
            limits,
            clock,
            limited_at: Default::default(),
            subscriptions: Vec::new(),
            last_inbound: now,
            last_ping: now,
            credential,
            auth_failures: 0,
            counted: Counted::default(),
        }
    }

    /// How often the driver should call [`WsSession::tick`].
    pub fn tick_every(&self) -> Duration {
        self.limits
            .ping_interval
            .min(Duration::from_secs(self.limits.stall_timeout_secs.max(1)))
            .div_f32(2.0)
            .max(Duration::from_millis(100))
    }

    /// Keepalive and stall rules; `stalled` is the outbound queue's verdict.
    pub fn tick(&mut self, stalled: bool) -> Tick {
        let now = self.clock.now();
        if Duration::from(now.duration_since(self.last_inbound))
            >= self.limits.ping_interval + self.limits.ping_timeout
        {
            return Tick::Dead;
        }
        if stalled {
            return Tick::Close(
                close_code::SLOW_READER,
                format!(
                    "slow reader: outbound queue full for {}s",
                    self.limits.stall_timeout_secs
                ),
            );
        }
        if Duration::from(now.duration_since(self.last_ping)) >= self.limits.ping_interval {
            self.last_ping = now;
            return Tick::Ping;
        }
        Tick::Nothing
    }

    /// Who the client is, once known.
    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    /// The driver checked the token of an `authenticate`.
    pub fn authentication(
        &mut self,
        outcome: Result<Credential, Denied>,
        request_id: Option<RequestId>,
        now: Timestamp,
    ) -> Vec<Action> {
        let denied = match outcome {
            Ok(credential) if credential.may_read() => {
                let answer = ServerMessage::Authenticated(Authenticated {
                    role: credential.role.to_string(),
                    hosts: credential.scope.globs(),
                    request_id,
                    timestamp: now,
                });
                self.credential = Some(credential);
                return vec![Action::Reply(answer)];
            }
            Ok(credential) => Denied::cannot_read(credential.role),
            Err(denied) => denied,
        };
        self.auth_failures += 1;
        let mut error = denied.message(now);
        error.request_id = request_id;
        let mut actions = vec![Action::Reply(ServerMessage::Error(error))];
        if self.auth_failures >= MAX_AUTH_FAILURES || matches!(denied, Denied::Blocked(_)) {
            actions.push(Action::Close(
                close_code::UNAUTHORIZED,
                "authentication failed".into(),
            ));
        }
        actions
    }

    /// The subscription ids the driver must remove from the hub at the end.
    pub fn subscriptions(&self) -> &[u64] {
        &self.subscriptions
    }

    /// The hub made subscription `id`. `true` when it is the connection's
    /// first (the connection became active).
    pub fn subscribed(&mut self, id: u64) -> bool {
        self.subscriptions.push(id);
        self.subscriptions.len() == 1
    }

    /// One client frame. `now` stamps the replies.
    pub fn receive(&mut self, frame: Frame<'_>, now: Timestamp) -> Vec<Action> {
        self.last_inbound = self.clock.now();
        let text = match frame {
            // Control frames count against the rate limit (a ping flood is
            // a flood), silently.
            Frame::Control => {
                return match self.messages.check() {
                    Ok(()) => Vec::new(),
                    Err(_) => self.count_limited().into_iter().collect(),
                };
            }
            Frame::Binary => None,
            Frame::Text(text) => Some(text),
        };
        self.counted.received += 1;
        if let Err(not_until) = self.messages.check() {
            if let Some(close) = self.count_limited() {
                return vec![close];
            }
            let wait = not_until.wait_time_from(self.clock.now());
            let mut error = error(ErrorCode::RateLimitExceeded, "Too many messages", None, now);
            error.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            return vec![reply(error)];
        }
        match text {
            Some(text) => self.handle_text(text, now),
            None => {
                self.counted.invalid += 1;
                let message = "binary frames are not supported: send JSON text frames";
                vec![reply(error(ErrorCode::InvalidMessage, message, None, now))]
            }
        }
    }

    /// Counts a rate-limited message; a close when they are too many
    /// within a minute.
    fn count_limited(&mut self) -> Option<Action> {
        self.counted.rate_limited += 1;
        let now = self.clock.now();
        self.limited_at.push_back(now);
        while self
            .limited_at
            .front()
            .is_some_and(|t| Duration::from(now.duration_since(*t)) > Duration::from_secs(60))
        {
            self.limited_at.pop_front();
        }
        (self.limited_at.len() > self.limits.abuse_limit as usize).then(|| {
            Action::Close(
                close_code::POLICY_VIOLATION,
                "rate limit exceeded repeatedly".into(),
            )
        })
    }

    fn invalid(&mut self, error: &DecodeError, now: Timestamp) -> Vec<Action> {
        self.counted.invalid += 1;
        vec![reply(ErrorMessage::invalid(error, now))]
    }

    fn handle_text(&mut self, text: &str, now: Timestamp) -> Vec<Action> {
        let message = match ClientMessage::from_json(text) {
            Ok(message) => message,
            Err(error) => return self.invalid(&error, now),
        };
        let request_id = message.request_id().cloned();
        if let Some((field, max)) = too_long(&message) {
            let error = DecodeError {
                field: Some(field.into()),
                problem: format!("too long: at most {max} bytes"),
                request_id,
            };
            return self.invalid(&error, now);
        }
        let subscribe = match message {
            ClientMessage::Subscribe(request) => Subscribe::Deployment {
                deployment_id: request.deployment_id,
                since: request.since,
            },
            ClientMessage::SubscribeLogs(request) => {
                let wanted = request.tail.unwrap_or(0).min(self.limits.max_tail);
                Subscribe::Logs {
                    replay: self.take_replay(wanted) as usize,
                    request,
                }
            }
            ClientMessage::SubscribeMetrics(request) => {
                if request.metrics.as_ref().is_some_and(Vec::is_empty) {
                    let error = DecodeError {
                        field: Some("metrics".into()),
                        problem: "must name at least one of cpu, memory, disk, network (or be left out for all)".into(),
                        request_id,
                    };
                    return self.invalid(&error, now);
                }
                Subscribe::Metrics { request }
            }
            ClientMessage::Unsubscribe(request) => {
                let position = self
                    .subscriptions
                    .iter()
                    .position(|id| subscription_name(*id) == request.subscription_id);
                let Some(position) = position else {
                    let mut error = error(
                        ErrorCode::SubscriptionNotFound,
                        "Subscription not found",
                        request_id.as_ref(),
                        now,
                    );
                    error.details = Some(json!({ "subscriptionId": request.subscription_id }));
                    return vec![reply(error)];
                };
                let id = self.subscriptions.swap_remove(position);
                return vec![
                    Action::Unsubscribe(id),
                    Action::Reply(ServerMessage::Unsubscribed(SubscriptionAck {
                        subscription_id: request.subscription_id,
                        request_id,
                        epoch: None,
                        timestamp: now,
                    })),
                ];
            }
            ClientMessage::Ping(_) => {
                return vec![Action::Reply(ServerMessage::Pong(Pong {
                    request_id,
                    timestamp: now,
                }))];
            }
            ClientMessage::Authenticate(request) => {
                return vec![Action::Authenticate {
                    token: request.token,
                    request_id,
                }];
            }
        };
        // Every subscription needs a credential that may read, and a host
        // it names must be one the credential covers (never silently
        // empty); with no host, the hub shows only the covered ones.
        let Some(credential) = &self.credential else {
            return vec![reply(error(
                ErrorCode::Unauthorized,
                "Authenticate first: send {\"type\":\"authenticate\",\"token\":…}",
                request_id.as_ref(),
                now,
            ))];
        };
        let host = match &subscribe {
            Subscribe::Logs { request, .. } => request.host.as_deref(),
            Subscribe::Metrics { request } => request.host.as_deref(),
            Subscribe::Deployment { .. } => None,
        };
        if let Some(host) = host
            && !credential.scope.allows(host)
        {
            let mut error = error(
                ErrorCode::Unauthorized,
                "This credential does not cover this host",
                request_id.as_ref(),
                now,
            );
            error.details = Some(json!({ "host": host }));
            return vec![reply(error)];
        }
        if self.subscriptions.len() >= self.limits.max_subscriptions {
            let max = self.limits.max_subscriptions;
            let message = format!("Subscription limit reached: at most {max} per connection");
            return vec![reply(subscription_failed(
                message,
                json!({ "limit": max }),
                request_id.as_ref(),
                now,
            ))];
        }
        vec![Action::Subscribe {
            subscribe,
            request_id,
        }]
    }

    /// Takes up to `wanted` tokens from the replay budget; returns how many.
    fn take_replay(&self, wanted: u32) -> u32 {
        let mut n = wanted;
        while n > 0 {
            match NonZeroU32::new(n).map(|n| self.replay.check_n(n)) {
                Some(Ok(Ok(()))) => return n,
                _ => n /= 2,
            }
        }
        0
    }
}

fn reply(error: ErrorMessage) -> Action {
    Action::Reply(ServerMessage::Error(error))
}

/// An error reply.
pub fn error(
    code: ErrorCode,
    message: impl Into<String>,
    request_id: Option<&RequestId>,
    now: Timestamp,
) -> ErrorMessage {
    let mut error = ErrorMessage::new(code, message, now);
    error.request_id = request_id.cloned();
    error
}

/// A `subscription_failed` error with details.
pub fn subscription_failed(
    message: impl Into<String>,
    details: serde_json::Value,
    request_id: Option<&RequestId>,
    now: Timestamp,
) -> ErrorMessage {
    let mut error = error(ErrorCode::SubscriptionFailed, message, request_id, now);
    error.details = Some(details);
    error
}

/// The `subscribed` ack of subscription `id`.
pub fn subscribed_ack(
    id: u64,
    request_id: Option<RequestId>,
    epoch: u64,
    now: Timestamp,
) -> ServerMessage {
    ServerMessage::Subscribed(SubscriptionAck {
        subscription_id: subscription_name(id),
        request_id,
        epoch: Some(epoch),
        timestamp: now,
    })
}

/// The first field over its size limit, and the limit.
fn too_long(message: &ClientMessage) -> Option<(&'static str, usize)> {
    let over = |field: &'static str, value: Option<&String>, max: usize| {
        value.filter(|v| v.len() > max).map(|_| (field, max))
    };
    match message {
        ClientMessage::SubscribeLogs(r) => over("host", r.host.as_ref(), MAX_NAME_BYTES)
            .or_else(|| over("application", r.application.as_ref(), MAX_NAME_BYTES))
            .or_else(|| over("search", r.search.as_ref(), MAX_SEARCH_BYTES)),
        ClientMessage::SubscribeMetrics(r) => over("host", r.host.as_ref(), MAX_NAME_BYTES)
            .or_else(|| over("application", r.application.as_ref(), MAX_NAME_BYTES)),
        ClientMessage::Subscribe(r) => over("deploymentId", Some(&r.deployment_id), MAX_ID_BYTES),
        ClientMessage::Unsubscribe(r) => {
            over("subscriptionId", Some(&r.subscription_id), MAX_ID_BYTES)
        }
        ClientMessage::Ping(_) => None,
        ClientMessage::Authenticate(r) => over("token", Some(&r.token), MAX_ID_BYTES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits() -> SessionLimits {
        SessionLimits {
            messages_per_second: 10,
            burst: 3,
            abuse_limit: 4,
            max_subscriptions: 2,
            replay_lines_per_second: 100,
            replay_burst: 1000,
            max_tail: 5000,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            stall_timeout_secs: 30,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000)
    }

    fn open() -> Option<Credential> {
        Some(Credential::open_reader())
    }

    /// A compact view of actions, for tables.
    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|action| match action {
                Action::Reply(ServerMessage::Error(e)) => format!("error {:?}", e.code),
                Action::Reply(ServerMessage::Pong(_)) => "pong".into(),
                Action::Reply(ServerMessage::Unsubscribed(a)) => {
                    format!("unsubscribed {}", a.subscription_id)
                }
                Action::Reply(other) => format!("reply {other:?}"),
                Action::Subscribe {
                    subscribe: Subscribe::Logs { replay, .. },
                    ..
                } => format!("subscribe logs replay {replay}"),
                Action::Subscribe { subscribe, .. } => match subscribe {
                    Subscribe::Deployment { deployment_id, .. } => {
                        format!("subscribe deployment {deployment_id}")
                    }
                    _ => "subscribe metrics".into(),
                },
                Action::Unsubscribe(id) => format!("unsubscribe {id}"),
                Action::Close(code, _) => format!("close {code}"),
                Action::Authenticate { token, .. } => format!("authenticate {token}"),
            })
            .collect()
    }

    #[test]
    fn messages_table() {
        type Case<'a> = (&'a str, &'a str, &'a [&'a str]);
        let cases: &[Case] = &[
            ("ping", r#"{"type":"ping"}"#, &["pong"]),
            ("not json", "{", &["error InvalidMessage"]),
            (
                "wrong type",
                r#"{"type":"subscribe-logs","tail":"x"}"#,
                &["error InvalidMessage"],
            ),
            (
                "unknown id",
                r#"{"type":"unsubscribe","subscriptionId":"sub-9"}"#,
                &["error SubscriptionNotFound"],
            ),
            (
                "deployment",
                r#"{"type":"subscribe","deploymentId":"d1"}"#,
                &["subscribe deployment d1"],
            ),
            (
                "logs",
                r#"{"type":"subscribe-logs","tail":50}"#,
                &["subscribe logs replay 50"],
            ),
            (
                "metrics",
                r#"{"type":"subscribe-metrics","host":"h"}"#,
                &["subscribe metrics"],
            ),
            (
                "no metrics",
                r#"{"type":"subscribe-metrics","metrics":[]}"#,
                &["error InvalidMessage"],
            ),
        ];
        for (name, text, expected) in cases {
            let mut session = WsSession::with_clock(limits(), FakeRelativeClock::default(), open());
            let actions = session.receive(Frame::Text(text), now());
            assert_eq!(summary(&actions), *expected, "{name}");
        }
        let long = format!(
            r#"{{"type":"subscribe-logs","search":"{}"}}"#,
            "x".repeat(2000)
        );
        let mut session = WsSession::with_clock(limits(), FakeRelativeClock::default(), open());
        let actions = session.receive(Frame::Text(&long), now());
        let Action::Reply(ServerMessage::Error(error)) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert!(error.message.contains("search"), "{}", error.message);
        assert_eq!(session.counted.invalid, 1);
        let actions = session.receive(Frame::Binary, now());
        assert_eq!(summary(&actions), ["error InvalidMessage"]);
    }

    #[test]
    fn subscriptions_are_counted_and_unsubscribed_by_name() {
        let clock = FakeRelativeClock::default();
        let mut session = WsSession::with_clock(limits(), clock.clone(), open());
        let subscribe = r#"{"type":"subscribe","deploymentId":"d"}"#;
        assert_eq!(
            summary(&session.receive(Frame::Text(subscribe), now())).len(),
            1
        );
        assert!(session.subscribed(7));
        assert!(!session.subscribed(8));
        // The third is over max_subscriptions = 2.
        clock.advance(Duration::from_secs(1));
        let actions = session.receive(Frame::Text(subscribe), now());
        assert_eq!(summary(&actions), ["error SubscriptionFailed"]);
        let unsubscribe = r#"{"type":"unsubscribe","subscriptionId":"sub-7","requestId":"r"}"#;
        let actions = session.receive(Frame::Text(unsubscribe), now());
        assert_eq!(summary(&actions), ["unsubscribe 7", "unsubscribed sub-7"]);
        assert_eq!(session.subscriptions(), [8]);
    }

    #[test]
    fn the_rate_limit_answers_then_closes_abusers() {
        let clock = FakeRelativeClock::default();
        let mut session = WsSession::with_clock(limits(), clock.clone(), open());
        let ping = Frame::Text(r#"{"type":"ping"}"#);
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.extend(summary(&session.receive(ping, now())));
        }
        // Burst 3, then rate_limit_exceeded; the 5th limited one within a
        // minute (abuse_limit 4) closes with 1008.
        assert_eq!(
            seen,
            [
                "pong",
                "pong",
                "pong",
                "error RateLimitExceeded",
                "error RateLimitExceeded",
                "error RateLimitExceeded",
                "error RateLimitExceeded",
                "close 1008"
            ]
        );
        // The bucket refills with time.
        let mut session = WsSession::with_clock(limits(), clock.clone(), open());
        for _ in 0..3 {
            session.receive(ping, now());
        }
        let limited = session.receive(ping, now());
        let Action::Reply(ServerMessage::Error(error)) = &limited[0] else {
            panic!()
        };
        assert_eq!(error.retry_after, Some(1));
        clock.advance(Duration::from_millis(150));
        assert_eq!(summary(&session.receive(ping, now())), ["pong"]);
        // Control frames count but get no answer.
        for _ in 0..3 {
            assert!(session.receive(Frame::Control, now()).is_empty());
        }
        assert!(session.counted.rate_limited >= 2);
    }

    #[test]
    fn tail_replays_share_a_budget() {
        let clock = FakeRelativeClock::default();
        let mut session = WsSession::with_clock(limits(), clock.clone(), open());
        let tail = |n: u32| format!(r#"{{"type":"subscribe-logs","tail":{n}}}"#);
        let replay = |session: &mut WsSession<FakeRelativeClock>, n| {
            summary(&session.receive(Frame::Text(&tail(n)), now()))
        };
        // Burst 1000: 800 fits, then only what is left (halving).
        assert_eq!(replay(&mut session, 800), ["subscribe logs replay 800"]);
        clock.advance(Duration::from_secs(1));
        session.subscriptions.clear();
        assert_eq!(replay(&mut session, 800), ["subscribe logs replay 200"]);
    }

    #[test]
    fn ticks_ping_and_find_the_dead() {
        let clock = FakeRelativeClock::default();
        let mut session = WsSession::with_clock(limits(), clock.clone(), open());
        assert_eq!(session.tick(false), Tick::Nothing);
        clock.advance(Duration::from_secs(30));
        assert_eq!(session.tick(false), Tick::Ping);
        assert_eq!(session.tick(false), Tick::Nothing);
        assert!(matches!(session.tick(true), Tick::Close(4008, _)));
        session.receive(Frame::Control, now());
        clock.advance(Duration::from_secs(39));
        assert_ne!(session.tick(false), Tick::Dead);
        clock.advance(Duration::from_secs(1));
        assert_eq!(session.tick(false), Tick::Dead);
    }

    #[test]
    fn authentication_gates_subscriptions_and_scopes_hosts() {
        use crate::auth::{Role, Scope};
        use std::sync::Arc;
        let clock = FakeRelativeClock::default();
        let mut session = WsSession::with_clock(limits(), clock.clone(), None);
        let logs =
            |host: &str| format!(r#"{{"type":"subscribe-logs","host":"{host}","requestId":"r1"}}"#);
        // Before authenticating: unauthorized, with the requestId.
        let actions = session.receive(Frame::Text(&logs("web-01")), now());
        let Action::Reply(ServerMessage::Error(error)) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(error.code, ErrorCode::Unauthorized);
        assert_eq!(error.request_id, Some(json!("r1")));
        // `authenticate` goes to the driver.
        let actions = session.receive(
            Frame::Text(r#"{"type":"authenticate","token":"t","requestId":7}"#),
            now(),
        );
        assert_eq!(summary(&actions), ["authenticate t"]);
        let reader = |role, globs: &[&str]| Credential {
            name: Arc::from("alice"),
            role,
            scope: Arc::new(
                Scope::parse(&globs.iter().map(|g| g.to_string()).collect::<Vec<_>>()).unwrap(),
            ),
        };
        // A publisher token cannot read: a failure.
        let actions = session.authentication(Ok(reader(Role::Publisher, &["*"])), None, now());
        assert_eq!(summary(&actions), ["error Unauthorized"]);
        let actions =
            session.authentication(Ok(reader(Role::Reader, &["web-*"])), Some(json!(7)), now());
        let Action::Reply(ServerMessage::Authenticated(answer)) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            (answer.role.as_str(), answer.hosts.clone()),
            ("reader", vec!["web-*".to_owned()])
        );
        assert_eq!(answer.request_id, Some(json!(7)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            summary(&session.receive(Frame::Text(&logs("web-01")), now())),
            ["subscribe logs replay 0"]
        );
        clock.advance(Duration::from_secs(1));
        let actions = session.receive(Frame::Text(&logs("db-01")), now());
        let Action::Reply(ServerMessage::Error(error)) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(error.code, ErrorCode::Unauthorized);
        assert_eq!(error.details, Some(json!({"host": "db-01"})));
        // Three failures close with 4001.
        let mut session = WsSession::with_clock(limits(), clock.clone(), None);
        let mut seen = Vec::new();
        for _ in 0..MAX_AUTH_FAILURES {
            seen.extend(summary(&session.authentication(
                Err(Denied::Invalid),
                None,
                now(),
            )));
        }
        assert_eq!(
            seen,
            [
                "error Unauthorized",
                "error Unauthorized",
                "error Unauthorized",
                "close 4001"
            ]
        );
        // An address over its failure allowance: told to wait, and closed.
        let mut session = WsSession::with_clock(limits(), clock, None);
        let actions = session.authentication(Err(Denied::Blocked(30)), None, now());
        assert_eq!(summary(&actions), ["error RateLimitExceeded", "close 4001"]);
    }
}
