//! The relay's configuration: `/etc/o1/relay.toml`, overridable key by key
//! from the environment (`O1_RELAY__SECTION__KEY`) and by `--set
//! section.key=value`. Every key has a default; unknown keys are errors that
//! name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::deployments::RegistryLimits;
use crate::hub::HistoryLimits;
use crate::hub::outbound::OutboundLimits;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    pub http: HttpConfig,
    pub websocket: WebSocketConfig,
    pub history: HistoryConfig,
    pub deployments: DeploymentsConfig,
    pub uplink: UplinkConfig,
    pub auth: AuthConfig,
    pub shutdown: ShutdownConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP listener (WebSocket API, REST, /metrics).
    pub listen: SocketAddr,
    /// Most HTTP connections open at once (WebSockets leave this count
    /// once upgraded); more are answered 503 at once.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also the longest
    /// an idle keep-alive connection stays open).
    pub header_timeout_secs: u64,
    /// Reverse proxies (CIDRs) whose `Forwarded` / `X-Forwarded-For` names
    /// the client: per-address limits then count the client, not the proxy.
    /// Empty (default): those headers are ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// PEM certificate chain and key: with both, the listener serves
    /// `https` and `wss` only (reloaded on SIGHUP). `o1-relay certs` makes
    /// a certificate that fits.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Origins (`scheme://host[:port]`, exact) whose pages may open the
    /// WebSocket; always also the relay's own origin, and any loopback
    /// origin when the listener is on loopback. An upgrade with another
    /// `Origin` gets 403; one without `Origin` (scripts) is not a browser
    /// and is let through.
    pub allowed_origins: Vec<String>,
    /// Host names (`Host` header, without port) requests may name, against
    /// DNS rebinding. Unset: on a loopback listener only loopback names
    /// (`localhost`, `127.0.0.1`, `::1`); on other listeners any (with a
    /// warning at start).
    pub allowed_hosts: Option<Vec<String>>,
    /// Serve `GET /metrics` without a token.
    pub metrics_open: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            max_connections: 10_000,
            header_timeout_secs: 10,
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            allowed_hosts: None,
            metrics_open: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Most WebSocket connections open at once.
    pub max_connections: usize,
    /// Most WebSocket connections from one client address.
    pub max_connections_per_address: usize,
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Most subscriptions of all connections from one client address (an
    /// IPv6 address counts by its /64).
    pub max_subscriptions_per_address: usize,
    /// Largest client message (frame) in bytes; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Sustained client messages per second per connection.
    pub messages_per_second: u32,
    /// Client messages allowed in a burst.
    pub burst: u32,
    /// Rate-limited messages tolerated within one minute before the
    /// connection is closed with 1008.
    pub abuse_limit: u32,
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// Seconds without any frame from the client after a ping before the
    /// connection is dropped as dead.
    pub ping_timeout_secs: u64,
    /// Log messages queued per connection before dropping.
    pub queue_messages: usize,
    /// Bytes queued per connection (everything: replies, replays, live)
    /// before log lines are dropped; replies over it mark the reader slow.
    pub queue_bytes: usize,
    /// Bytes queued by all connections of one client address together;
    /// over it their log lines are dropped (and replies mark them slow).
    pub queue_bytes_per_address: usize,
    /// History lines one connection may replay per second (`tail`), and in
    /// a burst; beyond them a replay is cut and the rest counted as
    /// dropped.
    pub replay_lines_per_second: u32,
    pub replay_burst: u32,
    /// Seconds a connection's queue may stay full before it is closed (4008).
    pub stall_timeout_secs: u64,
    /// Read buffer per connection in bytes. Clients send small JSON
    /// messages; every idle connection holds this much (1 KiB: 5.6 KiB per
    /// idle connection in all, 4 KiB: 8.6 KiB).
    pub read_buffer_bytes: usize,
    /// Write buffer per connection in bytes.
    pub write_buffer_bytes: usize,
    /// Threads one line's fan-out is split across when it goes to at least
    /// 256 subscribers per thread and can be written at once; `0`: one per
    /// core, at most 8.
    pub fanout_threads: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_connections: 50_000,
            max_connections_per_address: 1_000,
            max_subscriptions: 100,
            max_subscriptions_per_address: 2_000,
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            burst: 100,
            abuse_limit: 50,
            ping_interval_secs: 30,
            ping_timeout_secs: 30,
            queue_messages: 8192,
            queue_bytes: 4 * 1024 * 1024,
            queue_bytes_per_address: 64 * 1024 * 1024,
            replay_lines_per_second: 2_000,
            replay_burst: 20_000,
            stall_timeout_secs: 30,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 16 * 1024,
            fanout_threads: 0,
        }
    }
}

impl WebSocketConfig {
    pub fn outbound_limits(&self) -> OutboundLimits {
        OutboundLimits {
            max_queued: self.queue_messages,
            max_bytes: self.queue_bytes,
            max_metric_series: self.queue_messages,
            stall_timeout: Duration::from_secs(self.stall_timeout_secs),
        }
    }
}

/// `[history]`: the hub's limits, read as they are.
pub type HistoryConfig = HistoryLimits;

/// `[deployments]`: the registry's limits, read as they are.
pub type DeploymentsConfig = RegistryLimits;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// UDP address agents connect to (QUIC).
    pub listen: SocketAddr,
    /// PEM certificate chain of the relay.
    pub cert: PathBuf,
    /// PEM private key of the relay.
    pub key: PathBuf,
    /// Largest frame accepted from an agent, bytes.
    pub max_frame_bytes: usize,
    /// QUIC idle timeout, seconds: an agent silent for this long is gone.
    pub idle_timeout_secs: u64,
    /// Most agents connected at once.
    pub max_agents: usize,
    /// Most connections still in their handshake (TLS, hello) at once;
    /// more are refused.
    pub max_handshaking: usize,
    /// A host disconnected and silent for this long leaves the inventory
    /// (`/api/hosts`), seconds.
    pub forget_hosts_after_secs: u64,
    /// PEM CA certificate(s) of agent client certificates (mutual TLS). Set:
    /// an agent with a certificate it issued needs no token, and reports as
    /// the host its certificate names (`o1-relay certs --agent HOST`).
    pub client_ca: Option<PathBuf>,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            cert: PathBuf::from("/etc/o1/relay.crt"),
            key: PathBuf::from("/etc/o1/relay.key"),
            max_frame_bytes: o1_common::wire::DEFAULT_MAX_FRAME,
            idle_timeout_secs: 10,
            max_agents: 10_000,
            max_handshaking: 256,
            forget_hosts_after_secs: 7 * 24 * 3600,
            client_ca: None,
        }
    }
}

/// Whether browsers and REST readers need a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrowserAccess {
    /// Everyone who reaches the HTTP port reads everything (a trusted
    /// network, the demo): the seed page's examples run unchanged.
    Open,
    /// A reader (or admin) token is needed: the first WebSocket message
    /// `authenticate`, or `Authorization: Bearer` on the upgrade and on
    /// REST reads.
    #[default]
    Token,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `"token"` (default) or `"open"`.
    pub browsers: BrowserAccess,
    /// The credentials: `[[auth.token]]` tables.
    pub token: Vec<TokenConfig>,
    /// Deprecated: SHA-256 digests of admin tokens (the form before roles).
    /// Still accepted, as `admin`; a warning at start says so.
    pub token_sha256: Vec<String>,
    /// Failed authentications allowed per client address and minute;
    /// beyond, that address is refused until the minute ends.
    pub failures_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            browsers: BrowserAccess::Token,
            token: Vec::new(),
            token_sha256: Vec::new(),
            failures_per_minute: 20,
        }
    }
}

/// One `[[auth.token]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (for logs).
    pub name: String,
    /// SHA-256 (hex) of the token; `o1-relay token create` prints it.
    pub sha256: String,
    pub role: crate::auth::Role,
    /// Host globs: the hosts an agent may report as, a reader may see, a
    /// publisher may deploy to. Default: every host.
    #[serde(default = "every_host")]
    pub hosts: Vec<String>,
}

fn every_host() -> Vec<String> {
    vec!["*".into()]
}

impl AuthConfig {
    /// The verifier of every configured token (legacy digests as admin).
    pub fn verifier(&self) -> crate::auth::TokenVerifier {
        use crate::auth::{Credential, Role, Scope};
        let tokens = self.token.iter().filter_map(|t| {
            Some((
                t.sha256.to_ascii_lowercase(),
                Credential {
                    name: std::sync::Arc::from(t.name.as_str()),
                    role: t.role,
                    scope: std::sync::Arc::new(Scope::parse(&t.hosts).ok()?),
                },
            ))
        });
        let legacy = self.token_sha256.iter().map(|digest| {
            (
                digest.to_ascii_lowercase(),
                Credential {
                    name: std::sync::Arc::from("auth.token_sha256"),
                    role: Role::Admin,
                    scope: std::sync::Arc::new(Scope::all()),
                },
            )
        });
        crate::auth::TokenVerifier::new(tokens.chain(legacy))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds to drain connections after SIGTERM before exiting.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_secs: 10 }
    }
}

/// `[cluster]`: several relays sharing one NATS JetStream. Unset
/// `nats_url`: one relay on its own (the default). `Debug` leaves the
/// password and token out.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://host:4222`, or several separated by commas.
    pub nats_url: Option<String>,
    /// The JetStream stream holding every relay's changes.
    pub stream: String,
    /// Subjects are `<prefix>.log.<host>.<app>`, `<prefix>.metric...`.
    pub subject_prefix: String,
    /// This relay's name in the host inventory; default: its HTTP address.
    pub name: Option<String>,
    /// NATS credentials: a `.creds` file (JWT + nkey), or user and
    /// password, or a token.
    pub credentials_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// TLS to NATS: the CA to trust, and a client certificate if NATS asks.
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Stream replicas (1 for one NATS server, 3 for a NATS cluster).
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop resent batches.
    pub duplicate_window_secs: u64,
    /// A batch JetStream has not stored within this time is not acked and
    /// the agent's connection is closed (it resends, here or elsewhere).
    pub publish_timeout_ms: u64,
    /// How often this relay refreshes its connected hosts in the inventory
    /// bucket; a host not refreshed for three times this is shown
    /// disconnected (its relay died).
    pub heartbeat_secs: u64,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("ClusterConfig")
            .field("nats_url", &self.nats_url)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("name", &self.name)
            .field("credentials_file", &self.credentials_file)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            stream: "O1".into(),
            subject_prefix: "o1".into(),
            name: None,
            credentials_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            replicas: 1,
            duplicate_window_secs: 600,
            publish_timeout_ms: 5_000,
            heartbeat_secs: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] o1_runtime::LoadError),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl RelayConfig {
    /// `websocket.fanout_threads`, with `0` resolved to the cores (at most 8).
    pub fn fanout_threads(&self) -> usize {
        match self.websocket.fanout_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            n => n,
        }
    }

    /// The limits of one WebSocket connection's session.
    pub fn session_limits(&self) -> crate::api::session::SessionLimits {
        let ws = &self.websocket;
        crate::api::session::SessionLimits {
            messages_per_second: ws.messages_per_second,
            burst: ws.burst,
            abuse_limit: ws.abuse_limit,
            max_subscriptions: ws.max_subscriptions,
            replay_lines_per_second: ws.replay_lines_per_second,
            replay_burst: ws.replay_burst,
            max_tail: u32::try_from(self.history.lines_per_source).unwrap_or(u32::MAX),
            ping_interval: Duration::from_secs(ws.ping_interval_secs),
            ping_timeout: Duration::from_secs(ws.ping_timeout_secs),
            stall_timeout_secs: ws.stall_timeout_secs,
        }
    }

    /// Reads the file (absent is fine when `required` is false), applies the
    /// environment and `--set` overrides, and validates.
    pub fn load(
        path: Option<&Path>,
        required: bool,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let config: RelayConfig = o1_runtime::load_config(path, required, "O1_RELAY__", overrides)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than 0".into(),
                })
            } else {
                Ok(())
            }
        };
        let ws = &self.websocket;
        positive("websocket.max_connections", ws.max_connections as u64)?;
        positive(
            "websocket.max_connections_per_address",
            ws.max_connections_per_address as u64,
        )?;
        positive("websocket.max_subscriptions", ws.max_subscriptions as u64)?;
        positive(
            "websocket.max_subscriptions_per_address",
            ws.max_subscriptions_per_address as u64,
        )?;
        positive("websocket.queue_bytes", ws.queue_bytes as u64)?;
        positive(
            "websocket.queue_bytes_per_address",
            ws.queue_bytes_per_address as u64,
        )?;
        positive("http.max_connections", self.http.max_connections as u64)?;
        positive("history.max_line_bytes", self.history.max_line_bytes as u64)?;
        positive("deployments.max_active", self.deployments.max_active as u64)?;
        positive(
            "deployments.max_log_bytes",
            self.deployments.max_log_bytes as u64,
        )?;
        positive("uplink.max_handshaking", self.uplink.max_handshaking as u64)?;
        positive(
            "uplink.forget_hosts_after_secs",
            self.uplink.forget_hosts_after_secs,
        )?;
        positive(
            "deployments.active_ttl_secs",
            self.deployments.active_ttl_secs,
        )?;
        positive("http.header_timeout_secs", self.http.header_timeout_secs)?;
        positive(
            "websocket.messages_per_second",
            u64::from(ws.messages_per_second),
        )?;
        positive("websocket.burst", u64::from(ws.burst))?;
        positive("websocket.ping_interval_secs", ws.ping_interval_secs)?;
        positive("websocket.queue_messages", ws.queue_messages as u64)?;
        positive(
            "history.lines_per_source",
            self.history.lines_per_source as u64,
        )?;
        positive("uplink.idle_timeout_secs", self.uplink.idle_timeout_secs)?;
        positive("cluster.replicas", self.cluster.replicas as u64)?;
        positive(
            "cluster.duplicate_window_secs",
            self.cluster.duplicate_window_secs,
        )?;
        positive(
            "cluster.publish_timeout_ms",
            self.cluster.publish_timeout_ms,
        )?;
        positive("cluster.heartbeat_secs", self.cluster.heartbeat_secs)?;
        let token_name = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !token_name(&self.cluster.stream) {
            return Err(ConfigError::Invalid {
                key: "cluster.stream",
                message: "letters, digits, `-` and `_` only".into(),
            });
        }
        if !token_name(&self.cluster.subject_prefix) {
            return Err(ConfigError::Invalid {
                key: "cluster.subject_prefix",
                message: "letters, digits, `-` and `_` only".into(),
            });
        }
        if self.cluster.tls_cert.is_some() != self.cluster.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "cluster.tls_cert",
                message: "`cluster.tls_cert` and `cluster.tls_key` go together".into(),
            });
        }
        if ws.max_message_bytes < 256 {
            return Err(ConfigError::Invalid {
                key: "websocket.max_message_bytes",
                message: "must be at least 256".into(),
            });
        }
        if ws.read_buffer_bytes < 512 {
            return Err(ConfigError::Invalid {
                key: "websocket.read_buffer_bytes",
                message: "must be at least 512".into(),
            });
        }
        if self.uplink.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "uplink.max_frame_bytes",
                message: "must be at least 1024".into(),
            });
        }
        let is_digest = |d: &str| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
        for token in &self.auth.token_sha256 {
            if !is_digest(token) {
                return Err(ConfigError::Invalid {
                    key: "auth.token_sha256",
                    message: format!(
                        "`{token}` is not a SHA-256 hex digest (64 hex digits); use `o1-relay token create`"
                    ),
                });
            }
        }
        for token in &self.auth.token {
            if !is_digest(&token.sha256) {
                return Err(ConfigError::Invalid {
                    key: "auth.token.sha256",
                    message: format!(
                        "token `{}`: `{}` is not a SHA-256 hex digest (64 hex digits); use `o1-relay token create`",
                        token.name, token.sha256
                    ),
                });
            }
            if token.hosts.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "auth.token.hosts",
                    message: format!(
                        "token `{}` covers no host: list globs, or leave `hosts` out for every host",
                        token.name
                    ),
                });
            }
            if let Err(e) = crate::auth::Scope::parse(&token.hosts) {
                return Err(ConfigError::Invalid {
                    key: "auth.token.hosts",
                    message: format!("token `{}`: {e}", token.name),
                });
            }
        }
        positive(
            "auth.failures_per_minute",
            u64::from(self.auth.failures_per_minute),
        )?;
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "http.tls_cert",
                message: "set both http.tls_cert and http.tls_key, or neither".into(),
            });
        }
        for origin in &self.http.allowed_origins {
            if crate::api::origin::parse_origin(origin).is_none() {
                return Err(ConfigError::Invalid {
                    key: "http.allowed_origins",
                    message: format!(
                        "`{origin}` is not an origin: write scheme://host[:port], e.g. https://ops.example.com"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_reference_config_loads_with_the_defaults_it_documents() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/relay.toml");
        let config = RelayConfig::load(Some(&path), true, &[]).unwrap();
        let defaults = RelayConfig::default();
        assert_eq!(config.websocket.queue_bytes, defaults.websocket.queue_bytes);
        assert_eq!(config.http.max_connections, defaults.http.max_connections);
        assert_eq!(
            config.deployments.max_active,
            defaults.deployments.max_active
        );
        assert_eq!(
            config.uplink.max_handshaking,
            defaults.uplink.max_handshaking
        );
        assert_eq!(
            config.history.max_line_bytes,
            defaults.history.max_line_bytes
        );
    }

    fn load_text(text: &str, overrides: &[&str]) -> Result<RelayConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RelayConfig::load(Some(&path), true, &overrides)
    }

    #[test]
    fn errors_name_the_key() {
        let table = [
            ("[websocket]\nmax_conections = 5\n", "max_conections"),
            (
                "[websocket]\nmax_connections = 0\n",
                "websocket.max_connections",
            ),
            ("[http]\nlisten = \"nowhere\"\n", "listen"),
            ("[auth]\ntoken_sha256 = [\"abc\"]\n", "auth.token_sha256"),
            (
                "[[auth.token]]\nname = \"a\"\nsha256 = \"x\"\nrole = \"reader\"\n",
                "auth.token.sha256",
            ),
            (
                "[[auth.token]]\nname = \"a\"\nsha256 = \"x\"\nrole = \"root\"\n",
                "role",
            ),
            ("[auth]\nbrowsers = \"maybe\"\n", "browsers"),
            ("[http]\ntls_cert = \"/x\"\n", "http.tls_cert"),
            (
                "[http]\nallowed_origins = [\"evil.example\"]\n",
                "http.allowed_origins",
            ),
            ("[nonsense]\n", "nonsense"),
            ("[cluster]\nstream = \"a.b\"\n", "cluster.stream"),
            ("[cluster]\nreplicas = 0\n", "cluster.replicas"),
            ("[cluster]\ntls_cert = \"/x\"\n", "cluster.tls_cert"),
            ("[cluster]\nnats = \"x\"\n", "nats"),
        ];
        for (text, key) in table {
            let error = load_text(text, &[]).unwrap_err().to_string();
            assert!(
                error.contains(key),
                "{text:?}: `{error}` does not name {key}"
            );
        }
    }

    #[test]
    fn the_cluster_password_and_token_stay_out_of_debug_output() {
        let config = load_text(
            "[cluster]\nnats_url = \"nats://n:4222\"\npassword = \"hunter2\"\ntoken = \"s3cret\"\n",
            &[],
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("nats://n:4222"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn overrides_beat_the_file() {
        let config = load_text(
            "[http]\nlisten = \"127.0.0.1:1\"\n",
            &["http.listen=127.0.0.1:2"],
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 2);
        assert_eq!(
            config.websocket.max_subscriptions, 100,
            "defaults fill the rest"
        );
    }
}
