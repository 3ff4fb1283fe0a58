//! The uplink protocol of one agent connection, without I/O: bytes in,
//! decisions and frames out. The QUIC driver in [`super`] feeds it what the
//! stream delivers and writes what it returns.
//!
//! ```text
//! AwaitingHello --hello--> (caller authenticates) --welcome--> Ingesting
//!       |                                          `--refuse--> Closed
//!       `--batch--> error: a batch came before hello
//! Ingesting --batch--> Batch { new | duplicate } ... --take_ack--> Ack frame
//!           --hello--> error: hello sent twice
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use o1_common::wire::{
    self, Ack, AgentMessage, Batch, FrameError, FrameReader, Hello, RelayMessage, Welcome,
};

/// Largest hello frame: a host name, an id, a version, a token and the
/// application names fit in far less.
pub const HELLO_MAX_BYTES: usize = 16 * 1024;
/// Longest host name (DNS) an agent may report.
pub const MAX_HOST_BYTES: usize = 253;
/// Longest application name, agent id or version.
pub const MAX_NAME_BYTES: usize = 256;
/// Most applications one host may have in the inventory and in history;
/// items of further applications are refused and counted.
pub const MAX_APPLICATIONS_PER_HOST: usize = 256;

/// Why a connection is closed as broken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("a batch came before hello")]
    BatchBeforeHello,
    #[error("hello sent twice")]
    HelloTwice,
    #[error("no stream opened in time")]
    NoStream,
    #[error("no hello in time")]
    NoHello,
}

/// Why a hello is refused (sent to the agent as `Refused.reason`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("host name must be 1-{MAX_HOST_BYTES} bytes without control characters")]
    HostName,
    #[error("agent id must be 1-{MAX_NAME_BYTES} bytes without control characters")]
    AgentId,
    #[error("agent version too long")]
    Version,
    #[error("at most {MAX_APPLICATIONS_PER_HOST} applications per host")]
    TooManyApplications,
    #[error("application name {0:?} must be 1-{MAX_NAME_BYTES} bytes without control characters")]
    ApplicationName(String),
    #[error("invalid token")]
    InvalidToken,
    #[error("client certificates are not enabled on this relay (uplink.client_ca)")]
    ClientCertificatesDisabled,
    #[error("no client certificate was presented")]
    NoClientCertificate,
    #[error("the client certificate does not name host {0:?}")]
    CertificateHost(String),
    #[error("a {0} token cannot push over the uplink: use an agent token")]
    Role(String),
    #[error("this token may not report as host {0:?}")]
    HostNotAllowed(String),
    #[error("too many failed authentications from this address; retry in {0} s")]
    TooManyFailures(u64),
}

/// Whether a name from an agent is fit to keep and to log: not empty,
/// not too long, no control characters.
pub fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
}

/// Why a hello is refused, besides its credentials.
pub fn check_hello(hello: &Hello) -> Result<(), Refusal> {
    if !valid_name(&hello.host, MAX_HOST_BYTES) {
        return Err(Refusal::HostName);
    }
    if !valid_name(&hello.agent_id, MAX_NAME_BYTES) {
        return Err(Refusal::AgentId);
    }
    if hello.agent_version.len() > MAX_NAME_BYTES {
        return Err(Refusal::Version);
    }
    if hello.applications.len() > MAX_APPLICATIONS_PER_HOST {
        return Err(Refusal::TooManyApplications);
    }
    if let Some(bad) = hello
        .applications
        .iter()
        .find(|a| !valid_name(a, MAX_NAME_BYTES))
    {
        return Err(Refusal::ApplicationName(bad.clone()));
    }
    Ok(())
}

/// The highest sequence routed per agent id: a batch at or below it is a
/// resend after a lost ack. Bounded: beyond `max_agents` ids (each
/// `o1-agent deploy` run has its own), ids idle for `idle` are forgotten.
#[derive(Debug)]
pub struct HighWater {
    marks: HashMap<String, (u64, Instant)>,
    max_agents: usize,
    idle: Duration,
}

impl HighWater {
    pub fn new(max_agents: usize, idle: Duration) -> Self {
        HighWater {
            marks: HashMap::new(),
            max_agents,
            idle,
        }
    }

    /// Whether batch `sequence` of `agent_id` is new (and if so, marks it).
    pub fn admit(&mut self, agent_id: &str, sequence: u64, now: Instant) -> bool {
        if self.marks.len() >= self.max_agents && !self.marks.contains_key(agent_id) {
            let idle = self.idle;
            self.marks
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < idle);
        }
        let mark = self.marks.entry(agent_id.to_owned()).or_insert((0, now));
        mark.1 = now;
        if sequence > mark.0 {
            mark.0 = sequence;
            true
        } else {
            false
        }
    }

    /// Forgets that `sequence` of `agent_id` was seen (it could not be
    /// recorded): its resend is admitted.
    pub fn rollback(&mut self, agent_id: &str, sequence: u64) {
        if let Some(mark) = self.marks.get_mut(agent_id) {
            mark.0 = mark.0.min(sequence.saturating_sub(1));
        }
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    AwaitingHello,
    Ingesting { agent_id: String },
}

/// What the session made of the bytes fed so far.
#[derive(Debug, PartialEq)]
pub enum Input {
    /// The agent introduced itself: the caller checks its credentials and
    /// answers with [`UplinkSession::welcome`] or [`UplinkSession::refuse`].
    Hello(Hello),
    /// A batch; `new` is false for a duplicate, which is acked, not routed.
    Batch { batch: Batch, new: bool },
}

/// One agent connection's protocol state.
#[derive(Debug)]
pub struct UplinkSession {
    reader: FrameReader,
    phase: Phase,
    max_frame: usize,
    /// The highest sequence received and not yet acknowledged.
    pending_ack: Option<u64>,
}

impl UplinkSession {
    /// A hello may be at most [`HELLO_MAX_BYTES`]: a 4 MiB "hello" is
    /// refused from its length prefix alone.
    pub fn new(max_frame: usize) -> Self {
        UplinkSession {
            reader: FrameReader::new(HELLO_MAX_BYTES.min(max_frame)),
            phase: Phase::AwaitingHello,
            max_frame,
            pending_ack: None,
        }
    }

    /// Bytes the stream delivered.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.reader.extend(bytes);
    }

    /// The next whole message, if there is one. Batches are checked
    /// against `marks` (the relay-wide [`HighWater`]) as they come out.
    pub fn next_input(
        &mut self,
        marks: &mut dyn FnMut(&str, u64) -> bool,
    ) -> Result<Option<Input>, ProtocolError> {
        let Some(message) = self.reader.next_message::<AgentMessage>()? else {
            return Ok(None);
        };
        match (&self.phase, message) {
            (Phase::AwaitingHello, AgentMessage::Hello(hello)) => Ok(Some(Input::Hello(hello))),
            (Phase::AwaitingHello, AgentMessage::Batch(_)) => Err(ProtocolError::BatchBeforeHello),
            (Phase::Ingesting { .. }, AgentMessage::Hello(_)) => Err(ProtocolError::HelloTwice),
            (Phase::Ingesting { agent_id }, AgentMessage::Batch(batch)) => {
                let new = marks(agent_id, batch.sequence);
                self.pending_ack = Some(self.pending_ack.unwrap_or(0).max(batch.sequence));
                Ok(Some(Input::Batch { batch, new }))
            }
        }
    }

    /// Accepts `hello`: returns the `Welcome` frame and lifts the frame
    /// limit to the configured one.
    pub fn welcome(&mut self, hello: &Hello) -> Result<Vec<u8>, FrameError> {
        self.phase = Phase::Ingesting {
            agent_id: hello.agent_id.clone(),
        };
        self.reader.set_max_frame(self.max_frame);
        self.frame(&RelayMessage::Welcome(Welcome {
            relay_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    /// The `Refused` frame for `refusal`.
    pub fn refuse(&self, refusal: &Refusal) -> Result<Vec<u8>, FrameError> {
        self.frame(&RelayMessage::Refused(wire::Refused {
            reason: refusal.to_string(),
        }))
    }

    /// The cumulative `Ack` frame for everything received since the last
    /// one, if anything was.
    pub fn take_ack(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match self.pending_ack.take() {
            Some(sequence) => self.frame(&RelayMessage::Ack(Ack { sequence })).map(Some),
            None => Ok(None),
        }
    }

    fn frame(&self, message: &RelayMessage) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        wire::encode_frame(message, &mut out, self.max_frame)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use o1_common::Level;
    use o1_common::wire::{Credentials, Item, LogRecord, decode_frame};

    fn hello(agent_id: &str) -> Hello {
        Hello {
            agent_id: agent_id.into(),
            host: "web-01".into(),
            agent_version: "0.1.0".into(),
            credentials: Credentials::Token("t".into()),
            applications: vec!["nginx".into()],
        }
    }

    fn frame(message: &AgentMessage) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_frame(message, &mut out, wire::DEFAULT_MAX_FRAME).unwrap();
        out
    }

    fn batch(sequence: u64) -> Vec<u8> {
        let line = Item::Log(LogRecord {
            application: "nginx".into(),
            timestamp_ms: 0,
            level: Level::Info,
            message: format!("line {sequence}"),
            deployment_id: None,
        });
        wire::encode_batch(sequence, vec![line], 0, wire::DEFAULT_MAX_FRAME).unwrap()
    }

    fn decode(bytes: &[u8]) -> RelayMessage {
        match decode_frame::<RelayMessage>(bytes, wire::DEFAULT_MAX_FRAME).unwrap() {
            wire::Decoded::Frame { message, consumed } => {
                assert_eq!(consumed, bytes.len());
                message
            }
            other => panic!("{other:?}"),
        }
    }

    /// What one connection does, step by step: bytes in, inputs and acks
    /// out, checked against a shared HighWater.
    #[derive(Debug)]
    enum Step {
        Feed(Vec<u8>),
        /// The inputs now available: `Some(true)` a hello, else batches as
        /// (sequence, new).
        Expect(Vec<(u64, bool)>),
        Welcome,
        Ack(Option<u64>),
        Error(ProtocolError),
    }

    fn run(steps: Vec<Step>, marks: &mut HighWater, now: Instant) {
        let mut session = UplinkSession::new(wire::DEFAULT_MAX_FRAME);
        let mut hello_seen = None;
        for (i, step) in steps.into_iter().enumerate() {
            let mut admit = |id: &str, sequence: u64| marks.admit(id, sequence, now);
            match step {
                Step::Feed(bytes) => session.feed(&bytes),
                Step::Expect(expected) => {
                    let mut got = Vec::new();
                    while let Some(input) = session.next_input(&mut admit).unwrap() {
                        match input {
                            Input::Hello(h) => hello_seen = Some(h),
                            Input::Batch { batch, new } => got.push((batch.sequence, new)),
                        }
                    }
                    assert_eq!(got, expected, "step {i}");
                }
                Step::Welcome => {
                    let hello = hello_seen.take().expect("a hello came");
                    let welcome = session.welcome(&hello).unwrap();
                    assert!(matches!(decode(&welcome), RelayMessage::Welcome(_)));
                }
                Step::Ack(expected) => {
                    let ack = session.take_ack().unwrap().map(|f| match decode(&f) {
                        RelayMessage::Ack(ack) => ack.sequence,
                        other => panic!("{other:?}"),
                    });
                    assert_eq!(ack, expected, "step {i}");
                }
                Step::Error(expected) => {
                    assert_eq!(session.next_input(&mut admit).unwrap_err(), expected);
                }
            }
        }
    }

    #[test]
    fn sessions_table() {
        use Step::*;
        let now = Instant::now();
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "hello, batches in pieces, one cumulative ack",
                vec![
                    Feed(frame(&AgentMessage::Hello(hello("a")))),
                    Expect(vec![]),
                    Welcome,
                    Ack(None),
                    Feed([batch(1), batch(2)].concat()),
                    Feed(batch(3)[..5].to_vec()),
                    Expect(vec![(1, true), (2, true)]),
                    Feed(batch(3)[5..].to_vec()),
                    Expect(vec![(3, true)]),
                    Ack(Some(3)),
                    Ack(None),
                ],
            ),
            (
                "a resend after a lost ack is a duplicate, acked again",
                vec![
                    Feed(frame(&AgentMessage::Hello(hello("b")))),
                    Expect(vec![]),
                    Welcome,
                    Feed([batch(1), batch(2), batch(2), batch(1), batch(3)].concat()),
                    Expect(vec![
                        (1, true),
                        (2, true),
                        (2, false),
                        (1, false),
                        (3, true),
                    ]),
                    Ack(Some(3)),
                ],
            ),
            (
                "a batch before hello",
                vec![Feed(batch(1)), Error(ProtocolError::BatchBeforeHello)],
            ),
            (
                "hello twice",
                vec![
                    Feed(frame(&AgentMessage::Hello(hello("c")))),
                    Expect(vec![]),
                    Welcome,
                    Feed(frame(&AgentMessage::Hello(hello("c")))),
                    Error(ProtocolError::HelloTwice),
                ],
            ),
            (
                "garbage",
                vec![
                    Feed(b"\x00\x00\x00\x05GET /".to_vec()),
                    Error(ProtocolError::Frame(FrameError::BadMagic { found: *b"GE" })),
                ],
            ),
        ];
        let mut marks = HighWater::new(100, Duration::from_secs(3600));
        for (name, steps) in cases {
            eprintln!("case: {name}");
            run(steps, &mut marks, now);
        }
        // A new connection of agent "b" (after a reconnect) continues from
        // its mark: the resent 3 is a duplicate.
        run(
            vec![
                Step::Feed(frame(&AgentMessage::Hello(hello("b")))),
                Step::Expect(vec![]),
                Step::Welcome,
                Step::Feed([batch(3), batch(4)].concat()),
                Step::Expect(vec![(3, false), (4, true)]),
                Step::Ack(Some(4)),
            ],
            &mut marks,
            now,
        );
    }

    #[test]
    fn a_big_hello_is_refused_from_its_length() {
        let mut session = UplinkSession::new(wire::DEFAULT_MAX_FRAME);
        session.feed(&(1_000_000u32).to_be_bytes());
        assert!(matches!(
            session.next_input(&mut |_, _| true),
            Err(ProtocolError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn hellos_are_checked() {
        let ok = hello("a");
        let with = |f: &dyn Fn(&mut Hello)| {
            let mut h = ok.clone();
            f(&mut h);
            check_hello(&h)
        };
        assert_eq!(check_hello(&ok), Ok(()));
        assert_eq!(with(&|h| h.host.clear()), Err(Refusal::HostName));
        assert_eq!(with(&|h| h.host = "a\nb".into()), Err(Refusal::HostName));
        assert_eq!(
            with(&|h| h.agent_id = "x".repeat(257)),
            Err(Refusal::AgentId)
        );
        assert_eq!(
            with(&|h| h.agent_version = "v".repeat(300)),
            Err(Refusal::Version)
        );
        assert_eq!(
            with(&|h| h.applications = (0..300).map(|i| i.to_string()).collect()),
            Err(Refusal::TooManyApplications)
        );
        assert_eq!(
            with(&|h| h.applications = vec!["\u{7}".into()]),
            Err(Refusal::ApplicationName("\u{7}".into()))
        );
    }

    #[test]
    fn high_water_forgets_idle_agents_only_when_full() {
        let start = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut marks = HighWater::new(2, hour);
        assert!(marks.admit("a", 5, start));
        assert!(marks.admit("b", 1, start + hour));
        // Full: "a" has been idle an hour and is forgotten for "c".
        assert!(marks.admit("c", 1, start + hour + Duration::from_secs(1)));
        assert_eq!(marks.len(), 2);
        // So a resend of "a"'s 5 passes again: the bound's price (only
        // after an hour of silence with the table full).
        let later = start + 2 * hour + Duration::from_secs(2);
        assert!(marks.admit("a", 5, later));
        assert_eq!(marks.len(), 1);
        assert!(!marks.admit("a", 5, later));
    }
}
