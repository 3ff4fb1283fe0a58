//! Wire types and codecs shared by `o1-agent` and `o1-relay`.
//!
//! Everything here is plain data and pure functions: there is deliberately no
//! async runtime, no sockets and no clock reads (callers pass `now`), so the
//! protocol is tested without I/O and fuzzed cheaply.
//!
//! - [`api`]: the public WebSocket JSON API and the REST response shapes.
//! - [`rest`]: the REST API's request and response bodies.
//! - [`wire`]: the binary agent → relay uplink protocol and its sans-IO frame codec.
//! - [`deployment`]: deployment id rules, shared by agent and relay.
//! - [`matching`]: subscription filters as pure functions.
//! - [`level`]: log levels and their normalisation.
//! - [`timestamp`]: RFC 3339 timestamps as they appear on the API.

pub mod api;
pub mod config;
pub mod deployment;
pub mod level;
pub mod matching;
pub mod rest;
pub mod text;
pub mod timestamp;
pub mod wire;

pub use level::Level;
pub use timestamp::Timestamp;
