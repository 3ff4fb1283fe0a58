//! The agent's configuration: `/etc/o1/agent.toml`, overridable key by key
//! from the environment (`O1_AGENT__SECTION__KEY`) and by `--set
//! section.key=value`. Unknown keys and bad values fail at start with a
//! message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Host name reported to the relay; default: the system's host name.
    pub host: Option<String>,
    /// Where the agent keeps its id, spool and checkpoints.
    pub state_dir: PathBuf,
    pub relay: RelayConfig,
    pub metrics: MetricsConfig,
    pub logs: LogsConfig,
    pub batch: BatchConfig,
    pub spool: SpoolConfig,
    /// The applications to watch.
    #[serde(rename = "application")]
    pub applications: Vec<ApplicationConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            host: None,
            state_dir: PathBuf::from("/var/lib/o1-agent"),
            relay: RelayConfig::default(),
            metrics: MetricsConfig::default(),
            logs: LogsConfig::default(),
            batch: BatchConfig::default(),
            spool: SpoolConfig::default(),
            applications: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `host:port` of the relay's QUIC uplink.
    pub address: String,
    /// Several relays (a cluster): tried in order; on a lost connection
    /// the agent moves to the next at once. Empty: `address` alone.
    pub addresses: Vec<String>,
    /// Batches in flight with no ack for this long: the relay is taken as
    /// lost and the agent moves on (its unacked batches are resent; the
    /// relay or the cluster drops what it had already).
    pub ack_timeout_ms: u64,
    /// Name in the relay's certificate; default: the host part of the
    /// address connected to.
    pub server_name: Option<String>,
    /// PEM file of the CA that signed the relay's certificate.
    pub ca: Option<PathBuf>,
    /// The agent's token (not needed with a client certificate).
    pub token: String,
    /// PEM client certificate and key (mutual TLS), from `o1-relay certs
    /// --agent HOST`: the relay then knows this agent by its certificate,
    /// whose name must be this host's name.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Development only: accept any relay certificate. Logged loudly.
    pub insecure_skip_verify: bool,
    /// Most batches sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// First reconnect delay, milliseconds; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// QUIC idle timeout, seconds (keep-alives go at a third of it).
    pub idle_timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            address: "127.0.0.1:4433".into(),
            addresses: Vec::new(),
            ack_timeout_ms: 1_000,
            server_name: None,
            ca: None,
            token: String::new(),
            client_cert: None,
            client_key: None,
            insecure_skip_verify: false,
            max_in_flight: 32,
            min_backoff_ms: 200,
            max_backoff_ms: 30_000,
            idle_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Sampling interval, milliseconds (at least 200: CPU usage needs two
    /// readings that far apart).
    pub interval_ms: u64,
    /// Filesystem whose use is the host's `disk`.
    pub disk_path: PathBuf,
    /// Seconds between full process scans to find applications' processes
    /// by name or command line (known PIDs are refreshed every interval).
    pub discovery_interval_secs: u64,
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval_ms: 1000,
            disk_path: PathBuf::from("/"),
            discovery_interval_secs: 10,
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify (notify) events, with a periodic re-scan as a backstop.
    Notify,
    /// Re-scan every `poll_interval_ms` (NFS and other filesystems without
    /// inotify).
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    pub watch: WatchMode,
    /// Poll mode's interval, milliseconds.
    pub poll_interval_ms: u64,
    /// Backstop re-scan in notify mode, milliseconds.
    pub rescan_interval_ms: u64,
    /// Longest line kept; longer lines are cut and end with `…[truncated]`.
    pub max_line_bytes: usize,
    /// A last line without its newline is sent after this long, ms.
    pub partial_line_timeout_ms: u64,
    /// Where to start in a file that already exists when the agent runs for
    /// the first time (no checkpoint): `end` (default) or `beginning`.
    /// Files that appear later are always read from the beginning.
    pub start_at: StartAt,
    /// Most files watched at once.
    pub max_files: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            watch: WatchMode::Notify,
            poll_interval_ms: 250,
            rescan_interval_ms: 2_000,
            max_line_bytes: 64 * 1024,
            partial_line_timeout_ms: 2_000,
            start_at: StartAt::End,
            max_files: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// A batch closes at this many items...
    pub max_items: usize,
    /// ...or this many bytes of messages...
    pub max_bytes: usize,
    /// ...or when its first item is this old, milliseconds.
    pub max_age_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 2048,
            max_bytes: 512 * 1024,
            max_age_ms: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Bytes of batches kept on disk while unacknowledged; beyond it the
    /// oldest are dropped and the drop is reported.
    pub max_bytes: u64,
    /// Size of one spool segment file.
    pub segment_bytes: u64,
    /// fsync the spool at most this often, milliseconds (a crash of the
    /// agent loses nothing either way; this bounds loss on power failure).
    pub fsync_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            fsync_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Multiline {
    /// Every line is a record.
    None,
    /// Lines starting with whitespace continue the previous record (stack
    /// traces).
    Indented,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    pub name: String,
    /// Processes whose name is exactly this.
    pub process_name: Option<String>,
    /// Processes whose command line contains this.
    pub cmdline: Option<String>,
    /// A systemd unit: its cgroup lists the exact processes.
    pub systemd_unit: Option<String>,
    /// The application's data directory (its filesystem is `disk`).
    pub data_dir: Option<PathBuf>,
    /// Log files: paths or globs.
    #[serde(default)]
    pub logs: Vec<String>,
    #[serde(default = "default_multiline")]
    pub multiline: Multiline,
    /// Follow symbolic links among the log files (off: a link is reported
    /// and skipped, so whoever owns a log directory cannot make the agent
    /// ship another file it can read).
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Entries of the systemd journal to ship as this application's logs.
    pub journal: Option<JournalConfig>,
}

/// `journal = { units = ["myapp.service"], identifiers = [], min_priority
/// = "info", directory = "/path" }`: which journal entries are an
/// application's logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// systemd units (`_SYSTEMD_UNIT`, and systemd's own messages about
    /// them); a name without a suffix means `.service`.
    #[serde(default)]
    pub units: Vec<String>,
    /// Syslog identifiers (`SYSLOG_IDENTIFIER`), e.g. for cron jobs.
    #[serde(default)]
    pub identifiers: Vec<String>,
    /// Least important priority shipped: emerg, alert, crit, err, warning,
    /// notice, info (default) or debug, or 0–7.
    #[serde(default = "default_min_priority")]
    pub min_priority: String,
    /// Read journal files from this directory instead of the system's
    /// journal (a copied journal; tests).
    pub directory: Option<PathBuf>,
}

fn default_min_priority() -> String {
    "info".into()
}

/// A syslog priority by name or number: 0 (emerg) … 7 (debug).
pub fn parse_priority(text: &str) -> Option<u8> {
    let priority = match text.trim().to_ascii_lowercase().as_str() {
        "emerg" | "emergency" | "panic" => 0,
        "alert" => 1,
        "crit" | "critical" => 2,
        "err" | "error" => 3,
        "warning" | "warn" => 4,
        "notice" => 5,
        "info" => 6,
        "debug" => 7,
        number => number.parse().ok().filter(|n: &u8| *n <= 7)?,
    };
    Some(priority)
}

fn default_multiline() -> Multiline {
    Multiline::None
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] o1_runtime::LoadError),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl AgentConfig {
    pub fn load(
        path: Option<&Path>,
        required: bool,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let config: AgentConfig = o1_runtime::load_config(path, required, "O1_AGENT__", overrides)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.metrics.interval_ms < 200 {
            return Err(invalid(
                "metrics.interval_ms",
                format!(
                    "{} ms is too short: at least 200 ms (CPU usage needs two readings that far apart)",
                    self.metrics.interval_ms
                ),
            ));
        }
        if self.metrics.interval_ms > 3_600_000 {
            return Err(invalid("metrics.interval_ms", "at most one hour"));
        }
        if self.relay.address.parse::<SocketAddr>().is_err() && !self.relay.address.contains(':') {
            return Err(invalid(
                "relay.address",
                format!("`{}` is not host:port", self.relay.address),
            ));
        }
        if let Some(bad) = self
            .relay
            .addresses
            .iter()
            .find(|a| a.parse::<SocketAddr>().is_err() && !a.contains(':'))
        {
            return Err(invalid(
                "relay.addresses",
                format!("`{bad}` is not host:port"),
            ));
        }
        if self.relay.ack_timeout_ms < 100 {
            return Err(invalid("relay.ack_timeout_ms", "at least 100 ms"));
        }
        if self.relay.client_cert.is_some() != self.relay.client_key.is_some() {
            return Err(invalid(
                "relay.client_cert",
                "set both relay.client_cert and relay.client_key, or neither",
            ));
        }
        if self.relay.max_in_flight == 0 {
            return Err(invalid("relay.max_in_flight", "must be at least 1"));
        }
        if self.batch.max_items == 0 || self.batch.max_bytes < 1024 {
            return Err(invalid(
                "batch.max_items",
                "batches need at least 1 item and 1024 bytes",
            ));
        }
        if self.logs.max_line_bytes < 64 {
            return Err(invalid("logs.max_line_bytes", "must be at least 64"));
        }
        if self.spool.max_bytes < 2 * self.spool.segment_bytes
            || self.spool.segment_bytes < 64 * 1024
        {
            return Err(invalid(
                "spool.max_bytes",
                "must hold at least two segments, and spool.segment_bytes at least 64 KiB",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, app) in self.applications.iter().enumerate() {
            if app.name.trim().is_empty() {
                return Err(invalid(
                    format!("application[{i}].name"),
                    "missing or empty application name",
                ));
            }
            if app.name == "system" {
                return Err(invalid(
                    format!("application[{i}].name"),
                    "`system` is reserved for host-wide metrics",
                ));
            }
            if !names.insert(app.name.as_str()) {
                return Err(invalid(
                    format!("application[{i}].name"),
                    format!("`{}` is configured twice", app.name),
                ));
            }
            if let Some(journal) = &app.journal {
                if journal.units.is_empty() && journal.identifiers.is_empty() {
                    return Err(invalid(
                        format!("application[{i}].journal"),
                        "name at least one unit or identifier",
                    ));
                }
                if parse_priority(&journal.min_priority).is_none() {
                    return Err(invalid(
                        format!("application[{i}].journal.min_priority"),
                        format!(
                            "`{}` is not a priority: emerg, alert, crit, err, warning, notice, info, debug or 0-7",
                            journal.min_priority
                        ),
                    ));
                }
            }
            let matchers = [&app.process_name, &app.cmdline, &app.systemd_unit]
                .iter()
                .filter(|m| m.is_some())
                .count();
            if matchers > 1 {
                return Err(invalid(
                    format!("application[{i}]"),
                    "use one of process_name, cmdline, systemd_unit",
                ));
            }
        }
        Ok(())
    }

    pub fn host_name(&self) -> String {
        self.host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| sysinfo::System::host_name().ok())
            .unwrap_or_else(|| "localhost".into())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.metrics.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(Some(&path), true, &[])
    }

    #[test]
    fn invalid_configs_name_the_key() {
        let table = [
            ("colour = 1\n", "colour"),
            ("[metrics]\ninterval_ms = 10\n", "metrics.interval_ms"),
            ("[metrics]\ninterval_ms = \"fast\"\n", "interval_ms"),
            ("[[application]]\nlogs = []\n", "name"),
            ("[[application]]\nname = \"\"\n", "application[0].name"),
            (
                "[[application]]\nname = \"a\"\nprocess = \"x\"\n",
                "process",
            ),
            (
                "[[application]]\nname = \"a\"\n[[application]]\nname = \"a\"\n",
                "application[1].name",
            ),
            ("[logs]\nwatch = \"magic\"\n", "watch"),
            (
                "[[application]]\nname = \"a\"\njournal = { units = [] }\n",
                "application[0].journal",
            ),
            (
                "[[application]]\nname = \"a\"\njournal = { units = [\"a\"], min_priority = \"loud\" }\n",
                "application[0].journal.min_priority",
            ),
            (
                "[[application]]\nname = \"a\"\njournal = { unit = [\"a\"] }\n",
                "unit",
            ),
            (
                "[relay]\naddresses = [\"a:1\", \"nowhere\"]\n",
                "relay.addresses",
            ),
            ("[relay]\nack_timeout_ms = 5\n", "relay.ack_timeout_ms"),
        ];
        for (text, key) in table {
            let error = load(text).expect_err(text).to_string();
            assert!(
                error.contains(key),
                "{text:?}: `{error}` does not name `{key}`"
            );
        }
    }

    #[test]
    fn a_full_config_loads() {
        let config = load(
            "host = \"web-1\"\n[relay]\naddress = \"127.0.0.1:4433\"\ntoken = \"t\"\n[[application]]\nname = \"nginx\"\nprocess_name = \"nginx\"\nlogs = [\"/var/log/nginx/*.log\"]\nmultiline = \"indented\"\n",
        )
        .unwrap();
        assert_eq!(config.host_name(), "web-1");
        assert_eq!(config.applications[0].multiline, Multiline::Indented);
        assert_eq!(config.interval(), Duration::from_secs(1));
    }

    #[test]
    fn several_relays_are_tried_in_order_and_one_address_still_works() {
        let one = load("[relay]\naddress = \"r:4433\"\n").unwrap();
        assert_eq!(
            crate::uplink_settings(&one, "id".into()).addresses,
            ["r:4433"]
        );
        let several = load("[relay]\naddresses = [\"a:4433\", \"b:4433\"]\n").unwrap();
        assert_eq!(
            crate::uplink_settings(&several, "id".into()).addresses,
            ["a:4433", "b:4433"]
        );
    }
}
