//! End-to-end tests: the real binaries on free ports, real clients.

mod websocket_api;
