//! The inventory of hosts: which agents are connected, what they run, when
//! they were last heard from. Served at `GET /api/hosts`.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

use o1_common::Timestamp;
use o1_common::rest::{ApplicationView, HostView};

#[derive(Debug, Clone)]
pub struct HostEntry {
    pub host: String,
    pub agent_id: String,
    pub agent_version: String,
    pub connected: bool,
    /// Connections of this host's agent open now (normally 0 or 1).
    pub open_connections: u32,
    pub last_seen: Timestamp,
    pub connected_since: Option<Timestamp>,
    /// By name (a map: looking one up is not a scan); served as a list
    /// sorted by name.
    pub applications: BTreeMap<String, Option<Timestamp>>,
}

impl HostEntry {
    /// The REST view of this host.
    pub fn view(&self) -> HostView {
        HostView {
            host: self.host.clone(),
            agent_id: self.agent_id.clone(),
            agent_version: self.agent_version.clone(),
            connected: self.connected,
            last_seen: self.last_seen,
            connected_since: self.connected_since,
            applications: self
                .applications
                .iter()
                .map(|(name, last_seen)| ApplicationView {
                    name: name.clone(),
                    last_seen: *last_seen,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Inventory {
    hosts: Mutex<HashMap<String, HostEntry>>,
}

impl Inventory {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, HostEntry>) -> R) -> R {
        let mut hosts = self.hosts.lock();
        f(&mut hosts)
    }

    pub fn connected(
        &self,
        host: &str,
        agent_id: &str,
        agent_version: &str,
        applications: &[String],
        now: Timestamp,
    ) {
        self.with(|hosts| {
            let entry = hosts.entry(host.to_owned()).or_insert_with(|| HostEntry {
                host: host.to_owned(),
                agent_id: agent_id.to_owned(),
                agent_version: agent_version.to_owned(),
                connected: false,
                open_connections: 0,
                last_seen: now,
                connected_since: None,
                applications: BTreeMap::new(),
            });
            entry.agent_id = agent_id.to_owned();
            entry.agent_version = agent_version.to_owned();
            entry.open_connections += 1;
            entry.connected = true;
            entry.last_seen = now;
            entry.connected_since = Some(now);
            for name in applications.iter().map(String::as_str).chain(["system"]) {
                entry.applications.entry(name.to_owned()).or_insert(None);
            }
        });
    }

    pub fn disconnected(&self, host: &str, now: Timestamp) {
        self.with(|hosts| {
            if let Some(entry) = hosts.get_mut(host) {
                entry.open_connections = entry.open_connections.saturating_sub(1);
                entry.connected = entry.open_connections > 0;
                entry.last_seen = now;
                if !entry.connected {
                    entry.connected_since = None;
                }
            }
        });
    }

    /// Notes that `host` sent data for these applications. A host keeps
    /// at most `max_applications` (names must be 1-256 bytes without
    /// control characters); returns the names refused, whose items are not
    /// to be kept.
    pub fn seen<'a>(
        &self,
        host: &str,
        applications: impl Iterator<Item = &'a str>,
        now: Timestamp,
        max_applications: usize,
    ) -> Vec<String> {
        self.with(|hosts| {
            let mut refused = Vec::new();
            let Some(entry) = hosts.get_mut(host) else {
                return refused;
            };
            entry.last_seen = now;
            for name in applications {
                if let Some(last_seen) = entry.applications.get_mut(name) {
                    *last_seen = Some(now);
                } else if entry.applications.len() < max_applications
                    && crate::ingest::valid_name(name, crate::ingest::MAX_NAME_BYTES)
                {
                    entry.applications.insert(name.to_owned(), Some(now));
                } else {
                    refused.push(name.to_owned());
                }
            }
            refused
        })
    }

    /// Forgets hosts disconnected and silent since before `before`;
    /// returns how many.
    pub fn forget_silent(&self, before: Timestamp) -> usize {
        self.with(|hosts| {
            let count = hosts.len();
            hosts.retain(|_, h| h.connected || h.last_seen.unix_millis >= before.unix_millis);
            count - hosts.len()
        })
    }

    /// All hosts, sorted by name.
    /// One host's view, if known.
    pub fn view(&self, host: &str) -> Option<HostView> {
        self.with(|hosts| hosts.get(host).map(HostEntry::view))
    }

    pub fn snapshot(&self) -> Vec<HostView> {
        self.with(|hosts| {
            let sorted: BTreeMap<&String, &HostEntry> = hosts.iter().collect();
            sorted.into_values().map(HostEntry::view).collect()
        })
    }

    pub fn connected_count(&self) -> usize {
        self.with(|hosts| hosts.values().filter(|h| h.connected).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn applications_are_capped_per_host_and_silent_hosts_forgotten() {
        let inventory = Inventory::default();
        inventory.connected("web-1", "a1", "0.1", &["nginx".into()], at(1_000));
        // "system" and "nginx" are there: two more fit under a cap of 4.
        let refused = inventory.seen(
            "web-1",
            ["nginx", "x", "y", "z", "bad\nname"].into_iter(),
            at(2_000),
            4,
        );
        assert_eq!(refused, vec!["z".to_owned(), "bad\nname".to_owned()]);
        let hosts = inventory.snapshot();
        let names: Vec<&str> = hosts[0]
            .applications
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["nginx", "system", "x", "y"]);
        // Served as a list of {name, lastSeen}.
        let json = serde_json::to_value(&hosts[0]).unwrap();
        assert_eq!(json["applications"][0]["name"], "nginx");
        // A connected host is never forgotten; a silent disconnected one is.
        assert_eq!(inventory.forget_silent(at(10_000)), 0);
        inventory.disconnected("web-1", at(3_000));
        assert_eq!(inventory.forget_silent(at(2_500)), 0);
        assert_eq!(inventory.forget_silent(at(3_500)), 1);
        assert!(inventory.snapshot().is_empty());
    }
}
