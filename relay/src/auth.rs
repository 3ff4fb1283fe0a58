//! Who may do what: credentials with a [`Role`] and a host [`Scope`].
//!
//! The relay keeps only SHA-256 digests of tokens; a presented token is
//! hashed and compared with every configured digest in constant time. A
//! token's entry says its role (`agent`, `publisher`, `reader`, `admin`)
//! and the hosts it covers (globs). An agent with a client certificate
//! (mutual TLS) gets the `agent` role for exactly the host its certificate
//! names. Every surface asks a [`Credential`] the same questions:
//! [`Credential::may_read`], [`Credential::may_publish`],
//! [`Credential::may_push`] and [`Scope::allows`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use serde::Deserialize;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Push over the uplink, as the hosts of its scope.
    Agent,
    /// Create deployments and publish their events (REST, `o1-agent deploy`).
    Publisher,
    /// Subscribe and read REST data, for the hosts of its scope.
    Reader,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Publisher => "publisher",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hosts a credential covers: globs (`*`, `?`, `[…]`), matched against
/// the whole host name; `*` alone covers every host.
#[derive(Debug, Clone)]
pub struct Scope {
    patterns: Vec<glob::Pattern>,
    all: bool,
}

impl Scope {
    /// The globs, as configured (`["*"]` for every host).
    pub fn globs(&self) -> Vec<String> {
        if self.all {
            return vec!["*".into()];
        }
        self.patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect()
    }
}

impl Scope {
    /// Every host.
    pub fn all() -> Scope {
        Scope {
            patterns: Vec::new(),
            all: true,
        }
    }

    /// Exactly one host (a client certificate's).
    pub fn exactly(host: &str) -> Scope {
        Scope {
            patterns: vec![glob::Pattern::new(&glob::Pattern::escape(host)).unwrap_or_default()],
            all: false,
        }
    }

    pub fn parse(globs: &[String]) -> Result<Scope, glob::PatternError> {
        let all = globs.iter().any(|g| g == "*");
        let patterns = globs
            .iter()
            .map(|g| glob::Pattern::new(g))
            .collect::<Result<_, _>>()?;
        Ok(Scope { patterns, all })
    }

    pub fn is_all(&self) -> bool {
        self.all
    }

    pub fn allows(&self, host: &str) -> bool {
        self.all || self.patterns.iter().any(|p| p.matches(host))
    }

    /// Whether the scope covers a deployment that names `hosts`: every one
    /// of them; a deployment that names none belongs to the whole fleet,
    /// so only a scope of every host covers it.
    pub fn covers(&self, hosts: &[String]) -> bool {
        if hosts.is_empty() {
            return self.all;
        }
        hosts.iter().all(|h| self.allows(h))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The token's `name`, or `certificate:<host>`, for logs.
    pub name: Arc<str>,
    pub role: Role,
    pub scope: Arc<Scope>,
}

impl Credential {
    /// The credential of everyone when `auth.browsers = "open"`: a reader
    /// of every host.
    pub fn open_reader() -> Credential {
        Credential {
            name: Arc::from("open"),
            role: Role::Reader,
            scope: Arc::new(Scope::all()),
        }
    }

    /// Subscribe and read REST data.
    pub fn may_read(&self) -> bool {
        matches!(self.role, Role::Reader | Role::Admin)
    }

    /// Create deployments and publish their events over REST.
    pub fn may_publish(&self) -> bool {
        matches!(self.role, Role::Publisher | Role::Admin)
    }

    /// Connect over the uplink (an agent, or `o1-agent deploy` with a
    /// publisher token: deployment items only).
    pub fn may_push(&self) -> bool {
        matches!(self.role, Role::Agent | Role::Publisher | Role::Admin)
    }
}

/// Hex SHA-256 of a token, as written in `auth.token[].sha256`.
pub fn hash_token(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares without an early exit, so timing tells nothing of where two
/// digests differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The configured tokens: digest → credential.
#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    entries: Vec<([u8; 32], Credential)>,
}

impl TokenVerifier {
    /// Entries whose digest does not parse are skipped (config validation
    /// refuses them first).
    pub fn new(entries: impl IntoIterator<Item = (String, Credential)>) -> Self {
        TokenVerifier {
            entries: entries
                .into_iter()
                .filter_map(|(hex, credential)| Some((parse_hex(&hex)?, credential)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens have `role`.
    pub fn count(&self, role: Role) -> usize {
        self.entries.iter().filter(|(_, c)| c.role == role).count()
    }

    /// The credential of `token`, if it is a configured one.
    pub fn verify(&self, token: &str) -> Option<Credential> {
        let presented: [u8; 32] = digest(&SHA256, token.as_bytes()).as_ref().try_into().ok()?;
        // Compare with every digest, whatever matched, to keep timing flat.
        let mut found = None;
        for (known, credential) in &self.entries {
            if constant_time_eq(&presented, known) && found.is_none() {
                found = Some(credential.clone());
            }
        }
        found
    }
}

/// A new random token: 32 bytes, hex.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Failed authentications per client address (WebSocket, REST and the
/// uplink alike), in a fixed one-minute window: once an address has failed
/// `per_minute` times, its further attempts are refused before any token
/// is checked, until the window ends. Bounded: at most [`MAX_TRACKED`]
/// addresses; when full, windows that ended are forgotten first, and if
/// none has, the new address is refused (fail closed).
#[derive(Debug)]
pub struct FailureLimiter {
    per_minute: u32,
    windows: parking_lot::Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Most addresses whose failures are tracked at once.
pub const MAX_TRACKED: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        FailureLimiter {
            per_minute: per_minute.max(1),
            windows: Default::default(),
        }
    }

    /// `Err(seconds to wait)` while `address` is over its allowance.
    pub fn check(&self, address: IpAddr) -> Result<(), u64> {
        self.check_at(address, Instant::now())
    }

    fn check_at(&self, address: IpAddr, now: Instant) -> Result<(), u64> {
        let address = crate::api::websocket::client_key(address);
        match self.windows.lock().get(&address) {
            Some((start, count)) if *count >= self.per_minute => {
                let left = WINDOW.saturating_sub(now.saturating_duration_since(*start));
                if left.is_zero() {
                    Ok(())
                } else {
                    Err(left.as_secs().max(1))
                }
            }
            _ => Ok(()),
        }
    }

    /// Records a failure of `address`.
    pub fn failed(&self, address: IpAddr) {
        self.failed_at(address, Instant::now());
    }

    fn failed_at(&self, address: IpAddr, now: Instant) {
        let address = crate::api::websocket::client_key(address);
        let mut windows = self.windows.lock();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&address) {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return;
            }
        }
        let (start, count) = windows.entry(address).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(role: Role, hosts: &[&str]) -> Credential {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Credential {
            name: Arc::from("t"),
            role,
            scope: Arc::new(Scope::parse(&hosts).unwrap()),
        }
    }

    #[test]
    fn verifies_only_configured_tokens_and_returns_their_credential() {
        let verifier = TokenVerifier::new([
            (hash_token("right"), credential(Role::Reader, &["web-*"])),
            ("zz".repeat(32), credential(Role::Admin, &["*"])),
        ]);
        let found = verifier.verify("right").unwrap();
        assert_eq!(found.role, Role::Reader);
        assert!(found.scope.allows("web-01"));
        assert!(!found.scope.allows("db-01"));
        assert!(verifier.verify("wrong").is_none());
        assert!(verifier.verify("").is_none());
        assert_eq!(
            verifier.count(Role::Admin),
            0,
            "an unparsable digest is skipped"
        );
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(generate_token().len(), 64);
    }

    #[test]
    fn roles_table() {
        // (role, read, publish, push)
        let table = [
            (Role::Agent, false, false, true),
            (Role::Publisher, false, true, true),
            (Role::Reader, true, false, false),
            (Role::Admin, true, true, true),
        ];
        for (role, read, publish, push) in table {
            let c = credential(role, &["*"]);
            assert_eq!(
                (c.may_read(), c.may_publish(), c.may_push()),
                (read, publish, push),
                "{role}"
            );
        }
    }

    #[test]
    fn scopes_match_whole_names_and_cover_deployments() {
        let web = Scope::parse(&["web-*".into(), "api-0?".into()]).unwrap();
        for (host, allowed) in [
            ("web-01", true),
            ("web-", true),
            ("api-01", true),
            ("api-011", false),
            ("db-01", false),
            ("xweb-01", false),
        ] {
            assert_eq!(web.allows(host), allowed, "{host}");
        }
        assert!(web.covers(&["web-1".into(), "api-02".into()]));
        assert!(!web.covers(&["web-1".into(), "db-1".into()]));
        assert!(!web.covers(&[]), "a fleet-wide deployment needs every host");
        assert!(Scope::all().covers(&[]));
        let exact = Scope::exactly("web-[1]");
        assert!(exact.allows("web-[1]") && !exact.allows("web-1"));
        assert!(Scope::parse(&["[".into()]).is_err());
    }

    #[test]
    fn bearer_headers() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "bearer xyz".parse().unwrap());
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn failures_are_limited_per_address_for_a_minute() {
        let limiter = FailureLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(a, t0).is_ok());
            limiter.failed_at(a, t0);
        }
        assert_eq!(limiter.check_at(a, t0 + Duration::from_secs(10)), Err(50));
        assert!(
            limiter.check_at(b, t0).is_ok(),
            "another address has its own"
        );
        assert!(limiter.check_at(a, t0 + WINDOW).is_ok(), "the window ends");
        limiter.failed_at(a, t0 + WINDOW);
        assert!(limiter.check_at(a, t0 + WINDOW).is_ok(), "a new window");
    }
}
