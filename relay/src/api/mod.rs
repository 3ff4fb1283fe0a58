//! What browsers, scripts and dashboards talk to: the HTTP server
//! ([`http_server`]), the WebSocket API ([`websocket`], its protocol logic
//! in [`session`]) and the REST endpoints ([`rest`]).

pub mod http_server;
pub mod rest;
pub mod session;
pub mod websocket;
