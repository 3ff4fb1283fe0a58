//! The agent ⇄ relay uplink protocol: messages and a sans-IO frame codec.
//!
//! A frame on the QUIC stream is:
//!
//! ```text
//! ┌──────────────┬───────────┬─────────┬──────────────────────────┐
//! │ length: u32  │ magic "o1"│ version │ postcard-encoded message │
//! │ big-endian   │ 2 bytes   │ 1 byte  │ length - 3 bytes         │
//! └──────────────┴───────────┴─────────┴──────────────────────────┘
//! ```
//!
//! `length` counts everything after itself. The decoder takes bytes and
//! answers with a message, "incomplete, need more", or an error; it checks
//! the length against the configured maximum before it looks at the body, so
//! no input makes it allocate more than that maximum, and it never panics.
//!
//! postcard (1.x, a documented stable wire format) rather than bincode:
//! bincode 3.0.0 is a tombstone release that only fails to compile and 2.x is
//! flagged unmaintained (RUSTSEC-2025-0141).

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::api::DeploymentStatus;
use crate::level::Level;

/// First bytes of every frame body.
pub const MAGIC: [u8; 2] = *b"o1";
/// Version of the messages below. A peer with another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;
/// ALPN protocol id of the uplink.
pub const ALPN: &[u8] = b"o1/1";
/// Bytes before the postcard body: length prefix, magic, version.
pub const HEADER_LEN: usize = 4 + MAGIC.len() + 1;
/// Default largest frame either side accepts: 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// What an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First frame on the stream.
    Hello(Hello),
    Batch(Batch),
}

/// What the relay sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RelayMessage {
    Welcome(Welcome),
    /// The relay refuses the agent; the connection closes after this.
    Refused(Refused),
    /// The batch with this sequence number has been routed and may be
    /// forgotten by the agent.
    Ack(Ack),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Stable id of this agent (persisted by the agent), the key for
    /// duplicate detection.
    pub agent_id: String,
    pub host: String,
    pub agent_version: String,
    pub credentials: Credentials,
    /// Applications the agent is configured with, for the inventory.
    pub applications: Vec<String>,
}

/// How the agent proves who it is. Mutual TLS can be added as a variant
/// without changing the protocol version: a new variant is appended, and old
/// relays answer it with `Refused`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum Credentials {
    Token(String),
    /// The identity is the verified TLS client certificate.
    ClientCertificate,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::ClientCertificate => f.write_str("ClientCertificate"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub relay_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub sequence: u64,
}

/// A batch of items. Sequence numbers of one agent increase by one per
/// batch; the relay drops a batch whose sequence it has already routed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub sequence: u64,
    pub items: Vec<Item>,
    /// Items the agent had to drop (spool full) since its last report.
    pub dropped_items: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Item {
    Metric(MetricSample),
    Log(LogRecord),
    Deployment(DeploymentEvent),
}

/// One sample of one application (or `system` for the host).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub application: String,
    pub timestamp_ms: i64,
    /// `false` when none of the application's processes run.
    pub up: bool,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub memory_bytes: u64,
    pub disk_percent: Option<f64>,
    pub disk_bytes: Option<u64>,
    /// Bytes per second received and sent (host only).
    pub network: Option<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub application: String,
    pub timestamp_ms: i64,
    pub level: Level,
    pub message: String,
    /// Set for the output of a deployment step.
    pub deployment_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub deployment_id: String,
    pub application: String,
    pub timestamp_ms: i64,
    pub status: DeploymentStatus,
    /// 0–100 when known.
    pub progress: Option<u8>,
    pub message: String,
}

/// Why bytes could not be decoded into a frame, or a message into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    TooLarge { length: usize, max: usize },
    #[error("frame of {length} bytes is shorter than its header")]
    TooShort { length: usize },
    #[error("bad magic bytes {found:02x?}: the peer does not speak the o1 uplink protocol")]
    BadMagic { found: [u8; 2] },
    #[error("protocol version {found} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("frame body does not decode: {0}")]
    Body(String),
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// The result of looking at the bytes received so far.
#[derive(Debug, PartialEq)]
pub enum Decoded<T> {
    /// A whole frame: the message and how many bytes it took.
    Frame { message: T, consumed: usize },
    /// Not a whole frame yet: at least `needed` more bytes are required.
    Incomplete { needed: usize },
}

/// Decodes the first frame in `buf`, refusing frames over `max_frame` bytes.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_frame: usize,
) -> Result<Decoded<T>, FrameError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(Decoded::Incomplete {
            needed: 4 - buf.len(),
        });
    };
    let length = u32::from_be_bytes(*prefix) as usize;
    if length > max_frame {
        return Err(FrameError::TooLarge {
            length,
            max: max_frame,
        });
    }
    if length < HEADER_LEN - 4 {
        return Err(FrameError::TooShort { length });
    }
    // Check magic and version as soon as they arrive, so a stranger is
    // turned away before it sends a whole frame.
    let body = &buf[4..];
    if let Some(magic) = body.first_chunk::<2>()
        && *magic != MAGIC
    {
        return Err(FrameError::BadMagic { found: *magic });
    }
    if let Some(&version) = body.get(2)
        && version != PROTOCOL_VERSION
    {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    if body.len() < length {
        return Ok(Decoded::Incomplete {
            needed: length - body.len(),
        });
    }
    let payload = &body[3..length];
    let message = postcard::from_bytes(payload).map_err(|e| FrameError::Body(e.to_string()))?;
    Ok(Decoded::Frame {
        message,
        consumed: 4 + length,
    })
}

/// Appends one frame holding `message` to `out`.
pub fn encode_frame<T: Serialize>(
    message: &T,
    out: &mut Vec<u8>,
    max_frame: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    let encoded = postcard::to_extend(message, std::mem::take(out));
    *out = match encoded {
        Ok(buffer) => buffer,
        Err(e) => return Err(FrameError::Encode(e.to_string())),
    };
    let length = out.len() - start - 4;
    if length > max_frame {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            length,
            max: max_frame,
        });
    }
    let Ok(length) = u32::try_from(length) else {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            length,
            max: max_frame,
        });
    };
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// One frame holding the batch `sequence` of `items`: what an agent (the
/// spool, `o1-agent deploy`, the load generator) sends.
pub fn encode_batch(
    sequence: u64,
    items: Vec<Item>,
    dropped_items: u64,
    max_frame: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::new();
    let batch = AgentMessage::Batch(Batch {
        sequence,
        items,
        dropped_items,
    });
    encode_frame(&batch, &mut frame, max_frame)?;
    Ok(frame)
}

/// Accumulates bytes from a stream and yields whole frames: the buffering
/// half of the sans-IO codec.
#[derive(Debug)]
pub struct FrameReader {
    buffer: Vec<u8>,
    max_frame: usize,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            buffer: Vec::new(),
            max_frame,
        }
    }

    /// Adds received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match decode_frame::<T>(&self.buffer, self.max_frame)? {
            Decoded::Frame { message, consumed } => {
                self.buffer.drain(..consumed);
                if self.buffer.capacity() > 2 * self.max_frame.max(64 * 1024) {
                    self.buffer.shrink_to_fit();
                }
                Ok(Some(message))
            }
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    /// Changes the largest frame accepted from now on (e.g. small until the
    /// peer authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Bytes held that do not yet form a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 64 * 1024;

    fn frame(message: &AgentMessage) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(message, &mut out, MAX).unwrap();
        out
    }

    fn hello() -> AgentMessage {
        AgentMessage::Hello(Hello {
            agent_id: "a-1".into(),
            host: "web-01".into(),
            agent_version: "0.1.0".into(),
            credentials: Credentials::Token("secret".into()),
            applications: vec!["nginx".into()],
        })
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let bytes = frame(&hello());
        for cut in 0..bytes.len() {
            match decode_frame::<AgentMessage>(&bytes[..cut], MAX) {
                Ok(Decoded::Incomplete { needed }) => assert!(needed > 0),
                other => panic!("prefix of {cut} bytes gave {other:?}"),
            }
        }
        assert!(matches!(
            decode_frame::<AgentMessage>(&bytes, MAX),
            Ok(Decoded::Frame { consumed, .. }) if consumed == bytes.len()
        ));
    }

    #[test]
    fn oversized_frame_is_refused_from_its_prefix_alone() {
        let claimed = (MAX as u32 + 1).to_be_bytes();
        assert_eq!(
            decode_frame::<AgentMessage>(&claimed, MAX),
            Err(FrameError::TooLarge {
                length: MAX + 1,
                max: MAX
            })
        );
        let mut out = Vec::new();
        let big = AgentMessage::Batch(Batch {
            sequence: 1,
            items: vec![],
            dropped_items: 0,
        });
        assert!(encode_frame(&big, &mut out, 4).is_err());
        assert!(
            out.is_empty(),
            "a refused encode leaves the buffer as it was"
        );
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut bytes = frame(&hello());
        bytes[4] = b'X';
        assert!(matches!(
            decode_frame::<AgentMessage>(&bytes[..6], MAX),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bytes = frame(&hello());
        bytes[6] = 99;
        assert_eq!(
            decode_frame::<AgentMessage>(&bytes, MAX),
            Err(FrameError::UnsupportedVersion { found: 99 })
        );
        // HTTP or TLS bytes on the stream are garbage, not a huge frame wait.
        let http = b"GET / HTTP/1.1\r\n\r\n";
        assert!(decode_frame::<AgentMessage>(http, MAX).is_err());
    }

    #[test]
    fn too_short_and_undecodable_bodies_are_errors() {
        let bytes = [0, 0, 0, 1, b'o'];
        assert_eq!(
            decode_frame::<AgentMessage>(&bytes, MAX),
            Err(FrameError::TooShort { length: 1 })
        );
        let bytes = [0, 0, 0, 4, b'o', b'1', PROTOCOL_VERSION, 0xff];
        assert!(matches!(
            decode_frame::<AgentMessage>(&bytes, MAX),
            Err(FrameError::Body(_))
        ));
    }

    #[test]
    fn frame_reader_splits_a_stream_fed_byte_by_byte() {
        let mut stream = frame(&hello());
        let batch = AgentMessage::Batch(Batch {
            sequence: 9,
            items: vec![Item::Log(LogRecord {
                application: "app".into(),
                timestamp_ms: 5,
                level: Level::Error,
                message: "boom".into(),
                deployment_id: None,
            })],
            dropped_items: 2,
        });
        stream.extend(frame(&batch));
        let mut reader = FrameReader::new(MAX);
        let mut got = Vec::new();
        for byte in stream {
            reader.extend(&[byte]);
            while let Some(message) = reader.next_message::<AgentMessage>().unwrap() {
                got.push(message);
            }
        }
        assert_eq!(got, vec![hello(), batch]);
        assert_eq!(reader.buffered(), 0);
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex(".{0,40}").unwrap()
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (
                text(),
                any::<i64>(),
                0usize..6,
                text(),
                proptest::option::of(text())
            )
                .prop_map(
                    |(application, timestamp_ms, level, message, deployment_id)| {
                        Item::Log(LogRecord {
                            application,
                            timestamp_ms,
                            level: Level::ALL[level],
                            message,
                            deployment_id,
                        })
                    }
                ),
            (
                text(),
                any::<i64>(),
                any::<bool>(),
                0.0..100.0f64,
                any::<u64>(),
                proptest::option::of((0.0..1e9f64, 0.0..1e9f64))
            )
                .prop_map(|(application, timestamp_ms, up, cpu, bytes, network)| {
                    Item::Metric(MetricSample {
                        application,
                        timestamp_ms,
                        up,
                        cpu_percent: cpu,
                        memory_percent: cpu / 2.0,
                        memory_bytes: bytes,
                        disk_percent: Some(cpu),
                        disk_bytes: None,
                        network,
                    })
                }),
            (text(), text(), any::<i64>(), 0u8..=100, text()).prop_map(
                |(deployment_id, application, timestamp_ms, progress, message)| {
                    Item::Deployment(DeploymentEvent {
                        deployment_id,
                        application,
                        timestamp_ms,
                        status: DeploymentStatus::Running,
                        progress: Some(progress),
                        message,
                    })
                }
            ),
        ]
    }

    fn agent_message() -> impl Strategy<Value = AgentMessage> {
        prop_oneof![
            (
                text(),
                text(),
                text(),
                text(),
                proptest::collection::vec(text(), 0..4)
            )
                .prop_map(|(agent_id, host, agent_version, token, applications)| {
                    AgentMessage::Hello(Hello {
                        agent_id,
                        host,
                        agent_version,
                        credentials: Credentials::Token(token),
                        applications,
                    })
                }),
            (
                any::<u64>(),
                proptest::collection::vec(item(), 0..20),
                any::<u64>()
            )
                .prop_map(|(sequence, items, dropped_items)| AgentMessage::Batch(
                    Batch {
                        sequence,
                        items,
                        dropped_items
                    }
                )),
        ]
    }

    proptest! {
        #[test]
        fn agent_messages_round_trip(message in agent_message()) {
            let bytes = frame(&message);
            match decode_frame::<AgentMessage>(&bytes, MAX) {
                Ok(Decoded::Frame { message: back, consumed }) => {
                    prop_assert_eq!(back, message);
                    prop_assert_eq!(consumed, bytes.len());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn relay_messages_round_trip(sequence in any::<u64>(), reason in text()) {
            for message in [
                RelayMessage::Ack(Ack { sequence }),
                RelayMessage::Refused(Refused { reason: reason.clone() }),
                RelayMessage::Welcome(Welcome { relay_version: reason.clone() }),
            ] {
                let mut bytes = Vec::new();
                encode_frame(&message, &mut bytes, MAX).unwrap();
                let decoded = decode_frame::<RelayMessage>(&bytes, MAX).unwrap();
                prop_assert_eq!(decoded, Decoded::Frame { message, consumed: bytes.len() });
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<AgentMessage>(&bytes, 256);
            let _ = decode_frame::<RelayMessage>(&bytes, 256);
        }

        #[test]
        fn corrupted_frames_never_panic(message in agent_message(), index in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = frame(&message);
            let at = index % bytes.len();
            bytes[at] = byte;
            let _ = decode_frame::<AgentMessage>(&bytes, MAX);
        }
    }
}
