//! End-to-end tests: the real binaries on free ports, real clients.

// Tests: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod cluster;
mod dashboard;
mod deployments;
mod file_edges;
mod first_run;
mod hardening;
mod journal;
mod metrics;
mod resume;
mod seed_js;
mod tailing;
mod uplink;
mod websocket_api;
