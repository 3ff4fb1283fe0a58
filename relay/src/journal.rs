//! The journal: one interface for the two things a relay needs from its
//! history, with two implementations.
//!
//! - **fan-in** (`append_*`): a change (an agent's batch, a REST
//!   deployment change) is made durable, given its offset, and applied to
//!   the hub in one order that every subscriber sees;
//! - **history** (`reader`, `oldest_offset`, [`Hub::log_end`],
//!   [`Hub::epoch`]): read the changes from any offset, for `since`.
//!
//! | | one relay (default) | clustered (`[cluster] nats_url`) |
//! |---|---|---|
//! | durable | `store::Store`, the disk log | the JetStream stream |
//! | order, offset | the hub's publish lock, a counter | the stream sequence × `OFFSET_SCALE` |
//! | applied to the hub | at once, under the publish lock | by the relay's follower, in stream order |
//! | agent acked | after the append | after JetStream stored every part |
//! | read back | `LogReader` (own file handles) | an ordered consumer |
//!
//! The hub, the subscriptions, `since` replays and the REST handlers are
//! the same code in both; only this module and [`crate::cluster`] know
//! which one runs.

use std::borrow::Cow;
use std::time::Instant;

use o1_common::Timestamp;
use o1_common::wire::Item;
use o1_common::{Level, rest::DeploymentView};

use crate::auth::Scope;
use crate::cluster::{ClusterError, ClusterReader, DeploymentRecord};
use crate::deployments::{Deployment, DeploymentError, Update};
use crate::hub::{Hub, PublishError};
use crate::store::{EntryRef, LogReader, Record};

/// Why a change was not taken (the agent is not acked; REST answers 503).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Local(#[from] PublishError),
    #[error("the cluster did not take it: {0}")]
    Cluster(#[from] ClusterError),
}

/// Reads the journal from an offset.
#[derive(Debug)]
pub enum Reader {
    Disk(Box<LogReader>),
    Cluster(Box<ClusterReader>),
}

impl Reader {
    /// Up to `max` records that end after the start offset and begin
    /// before `to`; `Err` when the journal lost what was to be read.
    pub async fn next_chunk(
        self,
        to: u64,
        max: usize,
    ) -> (Option<Reader>, Result<Vec<Record>, String>) {
        match self {
            Reader::Disk(reader) => {
                let step = tokio::task::spawn_blocking(move || {
                    let mut reader = reader;
                    let records = reader.next_chunk(to, max).map_err(|e| e.to_string());
                    (reader, records)
                })
                .await;
                match step {
                    Ok((reader, records)) => (Some(Reader::Disk(reader)), records),
                    Err(error) => (None, Err(error.to_string())),
                }
            }
            Reader::Cluster(mut reader) => {
                let records = reader.next_chunk(to, max).await.map_err(|e| e.to_string());
                (Some(Reader::Cluster(reader)), records)
            }
        }
    }
}

impl Hub {
    /// A reader from `offset`; `None` when there is no history (memory
    /// only) or it cannot be read now.
    pub async fn reader(&self, offset: u64) -> Option<Reader> {
        if let Some(store) = self.store() {
            return store.reader(offset).ok().map(|r| Reader::Disk(Box::new(r)));
        }
        let cluster = self.cluster()?;
        cluster
            .reader(offset)
            .await
            .ok()
            .map(|r| Reader::Cluster(Box::new(r)))
    }

    /// The oldest offset the journal holds; `None` without history.
    pub async fn oldest_offset(&self) -> Option<u64> {
        if let Some(store) = self.store() {
            return Some(store.oldest_offset());
        }
        self.cluster()?.oldest_offset().await.ok()
    }

    /// Whether this hub has a journal to replay from.
    pub fn has_history(&self) -> bool {
        self.store().is_some() || self.cluster().is_some()
    }

    /// Takes an agent's batch (or a publisher's): appended and routed,
    /// or, clustered, stored by JetStream (every relay's follower routes
    /// it). `writer` is what the sender's credential covers.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_batch(
        &self,
        host: &str,
        agent_id: &str,
        sequence: u64,
        items: &[Item],
        writer: &Scope,
        ingested_at: Instant,
        now: Timestamp,
    ) -> Result<(), AppendError> {
        let Some(cluster) = self.cluster() else {
            self.publish_batch(host, agent_id, sequence, items, writer, ingested_at, now)?;
            return Ok(());
        };
        let items = self.covered_items(items, writer);
        cluster
            .publish_batch(host, agent_id, sequence, &items, now.unix_millis)
            .await?;
        Ok(())
    }

    /// The items a sender covering `writer` may publish: deployment events
    /// of deployments it does not cover are dropped, its lines leave such
    /// deployments (they still reach the host's log stream). The one-relay
    /// hub checks this while applying; the cluster's followers apply with
    /// no credential at hand, so the relay that took the batch checks.
    fn covered_items<'a>(&self, items: &'a [Item], writer: &Scope) -> Cow<'a, [Item]> {
        if writer.is_all() {
            return Cow::Borrowed(items);
        }
        let registry = self.lock_deployments();
        let uncovered = |id: &str| {
            registry
                .get(id)
                .is_some_and(|d: &Deployment| !writer.covers(&d.hosts))
        };
        let mut refused = 0;
        let items: Vec<Item> = items
            .iter()
            .filter_map(|item| match item {
                Item::Deployment(event) if uncovered(&event.deployment_id) => {
                    refused += 1;
                    None
                }
                Item::Log(line) if line.deployment_id.as_deref().is_some_and(uncovered) => {
                    let mut line = line.clone();
                    line.deployment_id = None;
                    Some(Item::Log(line))
                }
                other => Some(other.clone()),
            })
            .collect();
        self.stats.processing_errors.inc_by(refused);
        Cow::Owned(items)
    }

    /// `POST /api/deployments`.
    pub async fn append_create(
        &self,
        id: Option<String>,
        application: String,
        hosts: Vec<String>,
        message: Option<String>,
        now: Timestamp,
    ) -> Result<DeploymentView, DeploymentError> {
        let Some(cluster) = self.cluster() else {
            return self
                .create_deployment(id, application, hosts, message, now)
                .map(|d| d.view());
        };
        let generated = id.is_none();
        let mut candidate = self.check_create(id, application, hosts, message.clone(), now)?;
        // The id is taken in the cluster's bucket first: two relays cannot
        // both create it. A generated one moves on to `-2`, `-3`...
        let mut attempt = 1;
        loop {
            let record = DeploymentRecord {
                view: candidate.view(),
                offset: 0,
            };
            match cluster.reserve_deployment(&record).await {
                Ok(true) => break,
                Ok(false) if generated && attempt < 20 => {
                    attempt += 1;
                    let base = o1_common::deployment::base_id(now);
                    candidate.deployment_id = format!("{base}-{attempt}");
                }
                Ok(false) => {
                    return Err(DeploymentError::AlreadyExists(candidate.deployment_id));
                }
                Err(error) => return Err(DeploymentError::Storage(error.to_string())),
            }
        }
        let entry = EntryRef::Created {
            deployment_id: &candidate.deployment_id,
            application: &candidate.application,
            hosts: &candidate.hosts,
            message: message.as_deref(),
        };
        let id = candidate.deployment_id.clone();
        let committed = self.commit(cluster, &id, entry, now).await;
        if committed.is_err() && self.lock_deployments().get(&id).is_none() {
            // Not created: the id is free again.
            cluster.release_deployment(&id).await;
        }
        committed
    }

    /// A REST change of a deployment (events, cancel, timeout).
    pub async fn append_update(
        &self,
        id: &str,
        update: Update,
        now: Timestamp,
    ) -> Result<DeploymentView, DeploymentError> {
        let Some(cluster) = self.cluster() else {
            return self.update_deployment(id, update, now).map(|d| d.view());
        };
        self.lock_deployments().check_update(id, &update)?;
        let entry = EntryRef::Updated {
            deployment_id: id,
            status: update.status,
            progress: update.progress,
            message: update.message.as_deref(),
        };
        self.commit(cluster, id, entry, now).await
    }

    /// Publishes a deployment change, waits until this relay applied it,
    /// and answers with the deployment as it is then.
    async fn commit(
        &self,
        cluster: &crate::cluster::ClusterLink,
        id: &str,
        entry: EntryRef<'_>,
        now: Timestamp,
    ) -> Result<DeploymentView, DeploymentError> {
        let storage = |e: ClusterError| DeploymentError::Storage(e.to_string());
        let sequence = cluster
            .publish_deployment(id, entry, now.unix_millis)
            .await
            .map_err(storage)?;
        cluster.wait_applied(sequence).await.map_err(storage)?;
        self.lock_deployments()
            .get(id)
            .map(Deployment::view)
            .ok_or(DeploymentError::NotFound)
    }

    /// Log lines of a deployment given over REST.
    pub async fn append_deployment_logs(
        &self,
        id: &str,
        host: &str,
        lines: &[(Level, String)],
        now: Timestamp,
    ) -> Result<(), DeploymentError> {
        let Some(cluster) = self.cluster() else {
            return self.deployment_logs(id, host, lines, now);
        };
        let items = self.deployment_items(id, lines, now)?;
        let sequence = cluster
            .publish_batch(host, "", 0, &items, now.unix_millis)
            .await
            .map_err(|e| DeploymentError::Storage(e.to_string()))?;
        cluster
            .wait_applied(sequence)
            .await
            .map_err(|e| DeploymentError::Storage(e.to_string()))
    }

    /// Ends deployments that stopped reporting (see
    /// [`crate::deployments::Registry::stale`]).
    pub async fn append_expiries(&self, now: Timestamp) -> usize {
        let (stale, message) = {
            let registry = self.lock_deployments();
            (registry.stale(now), registry.timeout_message())
        };
        let mut expired = 0;
        for id in stale {
            let update = Update {
                status: Some(o1_common::api::DeploymentStatus::Failed),
                progress: None,
                message: Some(message.clone()),
            };
            if self.append_update(&id, update, now).await.is_ok() {
                tracing::info!(deployment = %id, "deployment timed out");
                expired += 1;
            }
        }
        expired
    }
}
