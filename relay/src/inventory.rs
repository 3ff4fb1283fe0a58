//! The inventory of hosts: which agents are connected, what they run, when
//! they were last heard from. Served at `GET /api/hosts`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use o1_common::Timestamp;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEntry {
    pub host: String,
    pub agent_id: String,
    pub agent_version: String,
    pub connected: bool,
    /// Connections of this host's agent open now (normally 0 or 1).
    #[serde(skip)]
    pub open_connections: u32,
    pub last_seen: Timestamp,
    pub connected_since: Option<Timestamp>,
    pub applications: Vec<ApplicationEntry>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationEntry {
    pub name: String,
    pub last_seen: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub struct Inventory {
    hosts: Mutex<HashMap<String, HostEntry>>,
}

impl Inventory {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, HostEntry>) -> R) -> R {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
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
                applications: Vec::new(),
            });
            entry.agent_id = agent_id.to_owned();
            entry.agent_version = agent_version.to_owned();
            entry.open_connections += 1;
            entry.connected = true;
            entry.last_seen = now;
            entry.connected_since = Some(now);
            for name in applications.iter().map(String::as_str).chain(["system"]) {
                if !entry.applications.iter().any(|a| a.name == name) {
                    entry.applications.push(ApplicationEntry {
                        name: name.to_owned(),
                        last_seen: None,
                    });
                }
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

    /// Notes that `host` sent data for these applications.
    pub fn seen<'a>(
        &self,
        host: &str,
        applications: impl Iterator<Item = &'a str>,
        now: Timestamp,
    ) {
        self.with(|hosts| {
            let Some(entry) = hosts.get_mut(host) else {
                return;
            };
            entry.last_seen = now;
            for name in applications {
                match entry.applications.iter_mut().find(|a| a.name == name) {
                    Some(app) => app.last_seen = Some(now),
                    None => entry.applications.push(ApplicationEntry {
                        name: name.to_owned(),
                        last_seen: Some(now),
                    }),
                }
            }
        });
    }

    /// All hosts, sorted by name.
    pub fn snapshot(&self) -> Vec<HostEntry> {
        self.with(|hosts| {
            let sorted: BTreeMap<&String, &HostEntry> = hosts.iter().collect();
            sorted.into_values().cloned().collect()
        })
    }

    pub fn connected_count(&self) -> usize {
        self.with(|hosts| hosts.values().filter(|h| h.connected).count())
    }
}
