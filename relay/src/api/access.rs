//! Who is calling, for REST and the WebSocket upgrade: the bearer token of
//! a request checked against the configured credentials, with failures
//! counted and limited per client address, and the answers a refused
//! caller gets (401 with `WWW-Authenticate`, 403, 429 with `Retry-After`).

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use o1_common::Timestamp;
use o1_common::api::{ErrorCode, ErrorMessage, ServerMessage};

use crate::AppState;
use crate::auth::{Credential, bearer};
use crate::config::BrowserAccess;

/// Why a caller is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denied {
    #[error("Missing token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("Invalid token")]
    Invalid,
    #[error("Too many failed authentications from this address; retry in {0} s")]
    Blocked(u64),
    #[error("{0}")]
    Forbidden(String),
}

impl Denied {
    /// A credential whose role may not read (subscribe, REST reads).
    pub fn cannot_read(role: crate::auth::Role) -> Denied {
        Denied::Forbidden(format!(
            "a {role} token cannot read: use a reader or admin token"
        ))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Denied::Missing | Denied::Invalid => StatusCode::UNAUTHORIZED,
            Denied::Blocked(_) => StatusCode::TOO_MANY_REQUESTS,
            Denied::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Denied::Blocked(_) => ErrorCode::RateLimitExceeded,
            _ => ErrorCode::Unauthorized,
        }
    }

    pub fn message(&self, now: Timestamp) -> ErrorMessage {
        let mut error = ErrorMessage::new(self.code(), self.to_string(), now);
        if let Denied::Blocked(seconds) = self {
            error.retry_after = Some(*seconds);
        }
        error
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let body = ServerMessage::Error(self.message(Timestamp::now())).to_json();
        let mut response = (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        match self {
            Denied::Missing | Denied::Invalid => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"o1\""),
                );
            }
            Denied::Blocked(seconds) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Denied::Forbidden(_) => {}
        }
        response
    }
}

/// Checks a presented token: its credential, or `Invalid` (counted against
/// the address), or `Blocked` when the address failed too often already.
pub fn verify(state: &AppState, token: &str, client: IpAddr) -> Result<Credential, Denied> {
    state.failures.check(client).map_err(Denied::Blocked)?;
    match state.tokens.verify(token) {
        Some(credential) => Ok(credential),
        None => {
            state.stats.auth_failures.inc();
            state.failures.failed(client);
            Err(Denied::Invalid)
        }
    }
}

/// The credential of a request's `Authorization: Bearer`, `None` when it
/// has none.
pub fn presented(
    state: &AppState,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Option<Credential>, Denied> {
    match bearer(headers) {
        Some(token) => verify(state, token, client).map(Some),
        None if headers.contains_key(header::AUTHORIZATION) => {
            state.stats.auth_failures.inc();
            Err(Denied::Invalid)
        }
        None => Ok(None),
    }
}

/// A caller that may read: a reader or admin token, or anyone when
/// `auth.browsers = "open"`.
pub fn reader(state: &AppState, headers: &HeaderMap, client: IpAddr) -> Result<Credential, Denied> {
    match presented(state, headers, client)? {
        Some(credential) if credential.may_read() => Ok(credential),
        Some(credential) => Err(Denied::cannot_read(credential.role)),
        None if state.config.auth.browsers == BrowserAccess::Open => Ok(Credential::open_reader()),
        None => Err(Denied::Missing),
    }
}

/// A caller that may create and change deployments: publisher or admin.
pub fn publisher(
    state: &AppState,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Credential, Denied> {
    match presented(state, headers, client)? {
        Some(credential) if credential.may_publish() => Ok(credential),
        Some(credential) => Err(Denied::Forbidden(format!(
            "a {} token cannot publish deployments: use a publisher or admin token",
            credential.role
        ))),
        None => Err(Denied::Missing),
    }
}

/// `Forbidden` unless `credential` covers the deployment's `hosts`.
pub fn covers(credential: &Credential, hosts: &[String], what: &str) -> Result<(), Denied> {
    if credential.scope.covers(hosts) {
        Ok(())
    } else if hosts.is_empty() {
        Err(Denied::Forbidden(format!(
            "{what} names no host (the whole fleet): only a credential for every host may"
        )))
    } else {
        Err(Denied::Forbidden(format!(
            "{what}: this credential does not cover all of its hosts"
        )))
    }
}
