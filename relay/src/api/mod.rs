//! What browsers, scripts and dashboards talk to: the HTTP server
//! ([`http_server`]), the WebSocket API ([`websocket`], its protocol logic
//! in [`session`]) and the REST endpoints ([`rest`]).

pub mod access;
pub mod dashboard;
pub mod http_server;
pub mod openapi;
pub mod origin;
pub mod rest;
pub mod session;
pub mod tls;
pub mod websocket;
