//! Several relays as one: the history and fan-in of [`crate::journal`]
//! on a NATS JetStream stream shared by every relay.
//!
//! ```text
//!  agents ─QUIC─▶ relay A ─publish (id agentId:seq:part)─▶ ┌──────────────┐
//!                                                         │ stream O1    │
//!  REST deployments ─▶ relay B ─publish─────────────────▶ │ o1.log.h.app │
//!                                                         │ o1.metric... │
//!  browsers ◀─ hub ◀─ follower (one ordered consumer) ◀── └──────────────┘
//!                     on every relay, in stream order
//! ```
//!
//! A relay acks an agent's batch once JetStream has stored every part of
//! it; it routes nothing itself: every relay's follower applies the stream
//! in order to its own hub, so every browser on every relay sees the same
//! changes in the same order, and `offset` is the stream sequence
//! (× [`OFFSET_SCALE`] + the item's position in the message). Deployments
//! and the host inventory also live in key-value buckets (`<stream>-deployments`,
//! `<stream>-hosts`): a relay that starts after the stream dropped a
//! deployment's creation still lists it, and `/api/hosts` answers the same
//! on every relay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use o1_common::Timestamp;
use o1_common::rest::{DeploymentView, HostView};
use o1_common::wire::Item;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::hub::{HistoryLimits, Hub};
use crate::inventory::Inventory;
use crate::store::{Entry, EntryRef, Record};

/// Offsets per stream message: item `i` of the message at stream
/// sequence `s` has offset `s * OFFSET_SCALE + i` (a message holds at most
/// `OFFSET_SCALE` items; JavaScript-safe up to 2^37 messages).
pub const OFFSET_SCALE: u64 = 1 << 16;
/// A message is kept under this many bytes of items (NATS' default
/// `max_payload` is 1 MiB).
const PART_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("JetStream did not store the batch within {0} ms")]
    Timeout(u64),
    #[error("not connected to the cluster yet")]
    NotReady,
    #[error("cannot encode: {0}")]
    Encode(#[from] postcard::Error),
}

fn nats<E: std::fmt::Display>(error: E) -> ClusterError {
    ClusterError::Nats(error.to_string())
}

/// What a stream message holds.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    at_ms: i64,
    /// The relay that published it.
    origin: &'a str,
    entry: EntryRef<'a>,
}

#[derive(Deserialize)]
struct Envelope {
    at_ms: i64,
    origin: String,
    entry: Entry,
}

/// A name as one subject token or key: letters, digits, `-` and `_` kept,
/// every other byte `=XX`; empty is `=`.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "=".into();
    }
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    out
}

/// A host as the inventory bucket holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HostRecord {
    view: HostView,
    relay: String,
    heartbeat_ms: i64,
}

/// A deployment as the deployments bucket holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub view: DeploymentView,
    /// The offset of the change it reflects: a write never replaces a
    /// newer one.
    pub offset: u64,
}

/// Figures for stats and `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterFigures {
    pub published_messages: AtomicU64,
    pub publish_failures: AtomicU64,
    pub duplicates: AtomicU64,
    pub applied_messages: AtomicU64,
    pub stream_messages: AtomicU64,
    pub stream_bytes: AtomicU64,
    pub stream_last_sequence: AtomicU64,
    pub consumers: AtomicU64,
}

/// The cluster as this relay sees it: connected or not, caught up or not.
#[derive(Debug)]
pub struct ClusterLink {
    pub config: ClusterConfig,
    pub name: String,
    ready: tokio::sync::OnceCell<Cluster>,
    /// Why the cluster is not usable now (`None`: it is).
    trouble: Mutex<Option<String>>,
    /// The follower has applied everything stored when it started.
    caught_up: AtomicBool,
    /// The last stream sequence this relay's hub applied.
    applied: watch::Sender<u64>,
    pub figures: ClusterFigures,
    /// Every relay's hosts, from the inventory bucket.
    hosts: Mutex<BTreeMap<String, HostRecord>>,
    /// Hosts of this relay whose inventory entry changed, to write.
    dirty_hosts: Mutex<HashSet<String>>,
    /// Deployments this relay changed, to write (latest view wins).
    dirty_deployments: Mutex<HashMap<String, DeploymentRecord>>,
    wake_writer: Notify,
}

#[derive(Debug)]
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    deployments: kv::Store,
    hosts: kv::Store,
    epoch: u64,
}

impl ClusterLink {
    pub fn new(config: ClusterConfig, name: String) -> Self {
        ClusterLink {
            config,
            name,
            ready: tokio::sync::OnceCell::new(),
            trouble: Mutex::new(Some("connecting to NATS".into())),
            caught_up: AtomicBool::new(false),
            applied: watch::channel(0).0,
            figures: ClusterFigures::default(),
            hosts: Mutex::new(BTreeMap::new()),
            dirty_hosts: Mutex::new(HashSet::new()),
            dirty_deployments: Mutex::new(HashMap::new()),
            wake_writer: Notify::new(),
        }
    }

    /// `None` when the cluster is usable; else why not (health says
    /// `degraded` with it; agents are not acked).
    pub fn trouble(&self) -> Option<String> {
        if let Some(reason) = self.trouble.lock().clone() {
            return Some(reason);
        }
        if let Some(cluster) = self.ready.get()
            && cluster.client.connection_state() != async_nats::connection::State::Connected
        {
            return Some("NATS connection lost; reconnecting".into());
        }
        if !self.caught_up.load(Ordering::Relaxed) {
            return Some("reading the cluster's history".into());
        }
        None
    }

    fn set_trouble(&self, reason: Option<String>) {
        *self.trouble.lock() = reason;
    }

    fn cluster(&self) -> Result<&Cluster, ClusterError> {
        self.ready.get().ok_or(ClusterError::NotReady)
    }

    pub fn epoch(&self) -> Option<u64> {
        self.ready.get().map(|c| c.epoch)
    }

    /// The figures for `stats.cluster` and `/metrics`.
    pub fn snapshot(&self) -> o1_common::api::ClusterStats {
        let f = &self.figures;
        let applied = self.applied();
        let last = f.stream_last_sequence.load(Ordering::Relaxed);
        let reason = self.trouble();
        o1_common::api::ClusterStats {
            relay: self.name.clone(),
            healthy: reason.is_none(),
            reason,
            applied_sequence: applied,
            stream_last_sequence: last,
            lag_messages: last.saturating_sub(applied),
            stream_messages: f.stream_messages.load(Ordering::Relaxed),
            stream_bytes: f.stream_bytes.load(Ordering::Relaxed),
            consumers: f.consumers.load(Ordering::Relaxed),
            published_messages: f.published_messages.load(Ordering::Relaxed),
            publish_failures: f.publish_failures.load(Ordering::Relaxed),
            duplicates: f.duplicates.load(Ordering::Relaxed),
        }
    }

    /// The last stream sequence applied by this relay.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until this relay's hub has applied stream sequence `sequence`.
    pub async fn wait_applied(&self, sequence: u64) -> Result<(), ClusterError> {
        let mut applied = self.applied.subscribe();
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        tokio::time::timeout(timeout, applied.wait_for(|a| *a >= sequence))
            .await
            .map_err(|_| ClusterError::Timeout(self.config.publish_timeout_ms))?
            .map_err(nats)?;
        Ok(())
    }

    fn subject(&self, kind: &str, parts: &[&str]) -> String {
        let mut subject = format!("{}.{kind}", self.config.subject_prefix);
        for part in parts {
            subject.push('.');
            subject.push_str(&token(part));
        }
        subject
    }

    /// Publishes one entry and waits until JetStream stored it; returns
    /// its stream sequence (and whether JetStream had it already).
    async fn publish(
        &self,
        subject: String,
        message_id: Option<String>,
        entry: EntryRef<'_>,
        at_ms: i64,
    ) -> Result<(u64, bool), ClusterError> {
        let pending = self.send(subject, message_id, entry, at_ms).await?;
        self.confirm(pending).await
    }

    async fn send(
        &self,
        subject: String,
        message_id: Option<String>,
        entry: EntryRef<'_>,
        at_ms: i64,
    ) -> Result<jetstream::context::PublishAckFuture, ClusterError> {
        let cluster = self.cluster()?;
        let payload = postcard::to_allocvec(&EnvelopeRef {
            at_ms,
            origin: &self.name,
            entry,
        })?;
        let mut message = jetstream::message::PublishMessage::build().payload(Bytes::from(payload));
        if let Some(id) = message_id {
            message = message.message_id(id);
        }
        cluster
            .js
            .send_publish(subject, message)
            .await
            .map_err(|e| {
                self.figures
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                nats(e)
            })
    }

    async fn confirm(
        &self,
        pending: jetstream::context::PublishAckFuture,
    ) -> Result<(u64, bool), ClusterError> {
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        let ack = match tokio::time::timeout(timeout, pending.into_future()).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(error)) => {
                self.figures
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(nats(error));
            }
            Err(_) => {
                self.figures
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ClusterError::Timeout(self.config.publish_timeout_ms));
            }
        };
        self.figures
            .published_messages
            .fetch_add(1, Ordering::Relaxed);
        if ack.duplicate {
            self.figures.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok((ack.sequence, ack.duplicate))
    }

    /// Publishes an agent's batch: one message per kind and application
    /// (`<prefix>.log.<host>.<app>`, `.metric.`, `.deploy.<host>`), each
    /// with the id `agentId:sequence:part`, so JetStream drops a resend
    /// after a failover. Returns once every part is stored, with the last
    /// part's stream sequence.
    pub async fn publish_batch(
        &self,
        host: &str,
        agent_id: &str,
        sequence: u64,
        items: &[Item],
        at_ms: i64,
    ) -> Result<u64, ClusterError> {
        let parts = split(items);
        let mut pending = Vec::with_capacity(parts.len());
        for (n, (subject, part)) in parts.iter().enumerate() {
            let subject = match subject {
                Kind::Log(app) => self.subject("log", &[host, app]),
                Kind::Metric(app) => self.subject("metric", &[host, app]),
                Kind::Deploy => self.subject("deploy", &[host]),
            };
            let id = (!agent_id.is_empty()).then(|| format!("{agent_id}:{sequence}:{n}"));
            let entry = EntryRef::Batch {
                host,
                agent_id,
                sequence,
                items: part,
            };
            pending.push(self.send(subject, id, entry, at_ms).await?);
        }
        let mut last = 0;
        for ack in pending {
            last = self.confirm(ack).await?.0;
        }
        Ok(last)
    }

    /// Publishes a deployment change (REST); returns its stream sequence.
    pub async fn publish_deployment(
        &self,
        deployment_id: &str,
        entry: EntryRef<'_>,
        at_ms: i64,
    ) -> Result<u64, ClusterError> {
        let subject = self.subject("deployment", &[deployment_id]);
        Ok(self.publish(subject, None, entry, at_ms).await?.0)
    }

    /// Reserves a deployment id cluster-wide; `false`: another relay has it.
    pub async fn reserve_deployment(
        &self,
        record: &DeploymentRecord,
    ) -> Result<bool, ClusterError> {
        let cluster = self.cluster()?;
        let value = Bytes::from(serde_json::to_vec(record).map_err(nats)?);
        match cluster
            .deployments
            .create(token(&record.view.deployment_id), value)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(nats(error)),
        }
    }

    /// Gives back a reserved id whose creation could not be published.
    pub async fn release_deployment(&self, id: &str) {
        if let Ok(cluster) = self.cluster()
            && let Err(error) = cluster.deployments.delete(token(id)).await
        {
            tracing::warn!(%error, deployment = %id, "cannot release a deployment id in the bucket");
        }
    }

    /// Notes a deployment this relay changed, for the bucket writer.
    pub fn deployment_changed(&self, record: DeploymentRecord) {
        let mut dirty = self.dirty_deployments.lock();
        let id = record.view.deployment_id.clone();
        if dirty.get(&id).is_none_or(|old| old.offset < record.offset) {
            dirty.insert(id, record);
        }
        drop(dirty);
        self.wake_writer.notify_one();
    }

    /// Notes that this relay's inventory entry of `host` changed.
    pub fn host_changed(&self, host: &str) {
        self.dirty_hosts.lock().insert(host.to_owned());
        self.wake_writer.notify_one();
    }

    /// Every relay's hosts, as `/api/hosts` serves them: a host whose
    /// relay stopped refreshing it is shown disconnected; one not seen
    /// for `forget` leaves the list (`uplink.forget_hosts_after_secs`).
    pub fn hosts(&self, now: Timestamp, forget: Duration) -> Vec<HostView> {
        let stale = now.unix_millis - 3 * 1000 * self.config.heartbeat_secs as i64;
        let forgotten = now
            .unix_millis
            .saturating_sub(i64::try_from(forget.as_millis()).unwrap_or(i64::MAX));
        self.hosts
            .lock()
            .values()
            .filter(|record| record.view.last_seen.unix_millis >= forgotten)
            .map(|record| {
                let mut view = record.view.clone();
                if view.connected && record.heartbeat_ms < stale {
                    view.connected = false;
                    view.connected_since = None;
                }
                view
            })
            .collect()
    }

    /// Connects, makes the stream and buckets, follows the stream into
    /// `hub`, keeps the buckets written and watched. Retries until
    /// `shutdown`; reports trouble meanwhile.
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        inventory: Arc<Inventory>,
        limits: HistoryLimits,
        shutdown: CancellationToken,
    ) {
        let mut wait = Duration::from_millis(200);
        let cluster = loop {
            match connect(&self.config, &self.name, &limits).await {
                Ok(cluster) => break cluster,
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot reach NATS JetStream; the relay is degraded (agents are not acked)");
                    self.set_trouble(Some(format!("NATS unreachable: {error}")));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        };
        hub.set_epoch(cluster.epoch);
        if let Err(error) = load_deployments(&cluster, &hub).await {
            tracing::warn!(%error, "cannot read the deployments bucket; rebuilding deployments from the stream alone");
        }
        let _ = self.ready.set(cluster);
        self.set_trouble(None);
        let Ok(cluster) = self.cluster() else { return };
        tracing::info!(stream = %self.config.stream, epoch = cluster.epoch, relay = %self.name, "joined the cluster");
        let tasks = [
            tokio::spawn(self.clone().follow(hub.clone(), shutdown.clone())),
            tokio::spawn(self.clone().watch_hosts(shutdown.clone())),
            tokio::spawn(self.clone().write_buckets(inventory, shutdown.clone())),
            tokio::spawn(self.clone().refresh_figures(shutdown.clone())),
        ];
        shutdown.cancelled().await;
        for task in tasks {
            task.abort();
        }
    }

    /// Applies the stream to the hub, in order, from the first message
    /// held; marks the relay caught up once it reaches the end seen at
    /// start.
    async fn follow(self: Arc<Self>, hub: Arc<Hub>, shutdown: CancellationToken) {
        let Ok(cluster) = self.cluster() else { return };
        let end_at_start = match cluster.stream.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(_) => 0,
        };
        if end_at_start == 0 {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        let started = Instant::now();
        loop {
            let messages = match ordered(cluster, self.applied() + 1).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot follow the cluster stream; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut messages = std::pin::pin!(messages);
            // A consumer that stops delivering while the stream grows (the
            // server restarted, the connection came back) is made again
            // from the next sequence to apply.
            let mut check = tokio::time::interval(Duration::from_secs(1));
            let mut stalled_checks = 0;
            let mut applied_at_check = self.applied();
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = messages.next() => next,
                    _ = check.tick() => {
                        let applied = self.applied();
                        let behind = self.figures.stream_last_sequence.load(Ordering::Relaxed) > applied;
                        stalled_checks = if behind && applied == applied_at_check { stalled_checks + 1 } else { 0 };
                        applied_at_check = applied;
                        if stalled_checks >= 3 {
                            tracing::warn!(applied, "the cluster stream's consumer stalled; following again");
                            break;
                        }
                        continue;
                    }
                };
                let Some(next) = next else { break };
                let (sequence, envelope) = match next {
                    Ok(next) => next,
                    Err(error) => {
                        tracing::warn!(%error, "cluster stream message unreadable; skipped");
                        continue;
                    }
                };
                let mine = envelope.origin == self.name;
                let changed = hub.apply_committed(
                    sequence * OFFSET_SCALE,
                    (sequence + 1) * OFFSET_SCALE,
                    envelope.at_ms,
                    envelope.entry.as_ref(),
                );
                if mine {
                    for view in changed {
                        self.deployment_changed(DeploymentRecord {
                            offset: sequence * OFFSET_SCALE,
                            view,
                        });
                    }
                }
                self.figures
                    .applied_messages
                    .fetch_add(1, Ordering::Relaxed);
                self.applied.send_replace(sequence);
                if !self.caught_up.load(Ordering::Relaxed) && sequence >= end_at_start {
                    self.caught_up.store(true, Ordering::Relaxed);
                    tracing::info!(
                        messages = sequence,
                        millis = started.elapsed().as_millis() as u64,
                        "cluster history caught up"
                    );
                }
            }
            // The consumer ended (the stream was reset?): start again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Keeps `hosts` equal to the inventory bucket.
    async fn watch_hosts(self: Arc<Self>, shutdown: CancellationToken) {
        let Ok(cluster) = self.cluster() else { return };
        loop {
            match cluster.hosts.watch_with_history(">").await {
                Ok(mut watch) => loop {
                    let entry = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        entry = watch.next() => entry,
                    };
                    let Some(Ok(entry)) = entry else { break };
                    let mut hosts = self.hosts.lock();
                    match entry.operation {
                        kv::Operation::Put => {
                            if let Ok(record) = serde_json::from_slice::<HostRecord>(&entry.value) {
                                hosts.insert(entry.key, record);
                            }
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            hosts.remove(&entry.key);
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, "cannot watch the hosts bucket; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes this relay's changed hosts and deployments to the buckets,
    /// and refreshes its connected hosts every `heartbeat_secs`.
    async fn write_buckets(
        self: Arc<Self>,
        inventory: Arc<Inventory>,
        shutdown: CancellationToken,
    ) {
        let Ok(cluster) = self.cluster() else { return };
        let mut heartbeat = tokio::time::interval(Duration::from_secs(self.config.heartbeat_secs));
        loop {
            let beat = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake_writer.notified() => false,
                _ = heartbeat.tick() => true,
            };
            let now = Timestamp::now();
            let mut hosts: HashSet<String> = std::mem::take(&mut *self.dirty_hosts.lock());
            if beat {
                hosts.extend(
                    inventory
                        .snapshot()
                        .into_iter()
                        .filter(|h| h.connected)
                        .map(|h| h.host),
                );
            }
            for host in hosts {
                let Some(view) = inventory.view(&host) else {
                    continue;
                };
                let record = HostRecord {
                    view,
                    relay: self.name.clone(),
                    heartbeat_ms: now.unix_millis,
                };
                if let Err(error) = put_host(cluster, &self.name, &record).await {
                    tracing::debug!(%error, %host, "hosts bucket write failed; retrying");
                    self.dirty_hosts.lock().insert(host);
                }
            }
            let deployments: Vec<DeploymentRecord> =
                std::mem::take(&mut *self.dirty_deployments.lock())
                    .into_values()
                    .collect();
            for record in deployments {
                if let Err(error) = put_deployment(cluster, &record).await {
                    tracing::debug!(%error, deployment = %record.view.deployment_id, "deployments bucket write failed; retrying");
                    self.deployment_changed(record);
                }
            }
        }
    }

    async fn refresh_figures(self: Arc<Self>, shutdown: CancellationToken) {
        let Ok(cluster) = self.cluster() else { return };
        let mut stream = cluster.stream.clone();
        loop {
            if let Ok(info) = stream.info().await {
                let f = &self.figures;
                f.stream_messages
                    .store(info.state.messages, Ordering::Relaxed);
                f.stream_bytes.store(info.state.bytes, Ordering::Relaxed);
                f.stream_last_sequence
                    .store(info.state.last_sequence, Ordering::Relaxed);
                f.consumers
                    .store(info.state.consumer_count as u64, Ordering::Relaxed);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Messages from stream sequence `from` on, as history records, for
    /// `since` replays.
    pub async fn reader(&self, offset: u64) -> Result<ClusterReader, ClusterError> {
        let cluster = self.cluster()?;
        let first = offset / OFFSET_SCALE;
        let messages = ordered(cluster, first.max(1)).await?;
        Ok(ClusterReader {
            messages: Box::pin(messages),
            pending: None,
            from: offset,
            position: first.max(1) * OFFSET_SCALE,
        })
    }

    /// The oldest offset the stream holds.
    pub async fn oldest_offset(&self) -> Result<u64, ClusterError> {
        let cluster = self.cluster()?;
        let info = cluster.stream.get_info().await.map_err(nats)?;
        Ok(info.state.first_sequence * OFFSET_SCALE)
    }
}

type Messages = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<(u64, Envelope), ClusterError>> + Send>,
>;

/// An ordered push consumer (flow-controlled, with idle heartbeats;
/// recreated by the client after a gap, never skipping) from stream
/// sequence `from`, decoded. (An ordered pull consumer measured the same
/// NATS CPU per message; push needs no pull requests.)
async fn ordered(
    cluster: &Cluster,
    from: u64,
) -> Result<
    impl futures_util::Stream<Item = Result<(u64, Envelope), ClusterError>> + Send + use<>,
    ClusterError,
> {
    let consumer = cluster
        .stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: cluster.client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let messages = consumer.messages().await.map_err(nats)?;
    Ok(messages.map(|message| {
        let message = message.map_err(nats)?;
        let sequence = message.info().map_err(nats)?.stream_sequence;
        let envelope: Envelope = postcard::from_bytes(&message.payload)?;
        Ok((sequence, envelope))
    }))
}

/// Reads the stream for a `since` replay: [`crate::store::LogReader`]'s
/// counterpart.
pub struct ClusterReader {
    messages: Messages,
    pending: Option<Record>,
    from: u64,
    /// The lowest offset the next message can have.
    position: u64,
}

impl std::fmt::Debug for ClusterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterReader")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl ClusterReader {
    /// Up to `max` records that end after the start offset and begin
    /// before `to` (`to` never beyond what this relay applied, so the
    /// messages are there).
    pub async fn next_chunk(&mut self, to: u64, max: usize) -> Result<Vec<Record>, ClusterError> {
        let mut out = Vec::new();
        while out.len() < max {
            let record = match self.pending.take() {
                Some(record) => record,
                None => {
                    if self.position >= to {
                        break;
                    }
                    let next = tokio::time::timeout(Duration::from_secs(5), self.messages.next())
                        .await
                        .map_err(|_| ClusterError::Timeout(5000))?;
                    let Some(next) = next else { break };
                    let (sequence, envelope) = next?;
                    self.position = (sequence + 1) * OFFSET_SCALE;
                    Record {
                        offset: sequence * OFFSET_SCALE,
                        at_ms: envelope.at_ms,
                        entry: envelope.entry,
                    }
                }
            };
            if record.offset >= to {
                self.pending = Some(record);
                break;
            }
            if record.end() > self.from {
                out.push(record);
            }
        }
        Ok(out)
    }
}

enum Kind<'a> {
    Log(&'a str),
    Metric(&'a str),
    Deploy,
}

/// Splits a batch into parts of one kind and application, in order, each
/// under [`PART_BYTES`] (roughly) and [`OFFSET_SCALE`] items. A batch that
/// is one part already (the usual case: one application's lines) is
/// borrowed, not copied.
fn split(items: &[Item]) -> Vec<(Kind<'_>, std::borrow::Cow<'_, [Item]>)> {
    let mut parts: Vec<(Kind<'_>, Vec<usize>, usize)> = Vec::new();
    let mut index: HashMap<(u8, &str), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let (key, kind, size) = match item {
            Item::Log(l) => (
                (0u8, l.application.as_str()),
                Kind::Log(&l.application),
                l.message.len() + l.application.len() + 48,
            ),
            Item::Metric(m) => (
                (1, m.application.as_str()),
                Kind::Metric(&m.application),
                m.application.len() + 96,
            ),
            Item::Deployment(d) => ((2, ""), Kind::Deploy, d.message.len() + 96),
        };
        let at = match index.get(&key) {
            Some(&at)
                if parts[at].2 + size <= PART_BYTES
                    && (parts[at].1.len() as u64) < OFFSET_SCALE =>
            {
                at
            }
            _ => {
                parts.push((kind, Vec::new(), 0));
                index.insert(key, parts.len() - 1);
                parts.len() - 1
            }
        };
        parts[at].1.push(i);
        parts[at].2 += size;
    }
    if parts.len() == 1 {
        return parts
            .into_iter()
            .map(|(kind, ..)| (kind, std::borrow::Cow::Borrowed(items)))
            .collect();
    }
    parts
        .into_iter()
        .map(|(kind, at, _)| {
            let part: Vec<Item> = at.into_iter().map(|i| items[i].clone()).collect();
            (kind, std::borrow::Cow::Owned(part))
        })
        .collect()
}

async fn connect(
    config: &ClusterConfig,
    name: &str,
    limits: &HistoryLimits,
) -> Result<Cluster, ClusterError> {
    let url = config.nats_url.as_deref().unwrap_or_default();
    let addresses: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(nats)?;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("o1-relay {name}"))
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None);
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(nats)?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = options.connect(addresses).await.map_err(nats)?;
    let js = jetstream::new(client.clone());
    let max_bytes = i64::try_from(limits.disk_bytes).unwrap_or(i64::MAX);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            max_bytes,
            max_age: Duration::from_secs(limits.disk_max_age_secs),
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(config.duplicate_window_secs),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::Nats(format!("stream {}: {e}", config.stream)))?;
    let info = stream
        .info()
        .await
        .map_err(|e| ClusterError::Nats(format!("stream info: {e}")))?;
    // The stream's creation names its history: a wiped stream is another.
    let created = info.created.unix_timestamp_nanos() as u64;
    let epoch = (created ^ (created >> 29) ^ 0x9E37_79B9_7F4A_7C15) & ((1 << 53) - 1);
    let bucket = |suffix: &str| kv::Config {
        bucket: format!("{}-{suffix}", config.stream),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        ..Default::default()
    };
    let deployments = open_bucket(&js, bucket("deployments")).await?;
    let hosts = open_bucket(&js, bucket("hosts")).await?;
    Ok(Cluster {
        client,
        js,
        stream,
        deployments,
        hosts,
        epoch: epoch.max(1),
    })
}

/// Opens a key-value bucket, making it first if needed. Its stream is
/// made here as `create_key_value` would (NATS 2.9's account information,
/// which that call reads first, is older than the client expects).
async fn open_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: config.history.max(1),
        storage: config.storage,
        num_replicas: config.num_replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Nats(format!("bucket {name}: {e}")))?;
    js.get_key_value(&name)
        .await
        .map_err(|e| ClusterError::Nats(format!("bucket {name}: {e}")))
}

/// Loads every deployment of the bucket into the hub (before the stream is
/// followed: changes the stream still holds are applied over them only if
/// newer).
async fn load_deployments(cluster: &Cluster, hub: &Hub) -> Result<(), ClusterError> {
    let mut keys = cluster.deployments.keys().await.map_err(nats)?;
    let mut loaded = 0;
    while let Some(key) = keys.next().await {
        let key = key.map_err(nats)?;
        // Offset 0: an id reserved whose creation is not applied yet (or
        // never was): the stream's creation, if any, makes it.
        if let Some(value) = cluster.deployments.get(&key).await.map_err(nats)?
            && let Ok(record) = serde_json::from_slice::<DeploymentRecord>(&value)
            && record.offset > 0
        {
            hub.restore_deployment(record.view, record.offset);
            loaded += 1;
        }
    }
    tracing::info!(loaded, "deployments loaded from the cluster bucket");
    Ok(())
}

/// Writes a host's record; a disconnection only if this relay still owns
/// the host (its agent may be on another relay already).
async fn put_host(cluster: &Cluster, me: &str, record: &HostRecord) -> Result<(), ClusterError> {
    let key = token(&record.view.host);
    let value = Bytes::from(serde_json::to_vec(record).map_err(nats)?);
    if record.view.connected {
        cluster.hosts.put(key, value).await.map_err(nats)?;
        return Ok(());
    }
    match cluster.hosts.entry(key.clone()).await.map_err(nats)? {
        Some(entry) => {
            let owner = serde_json::from_slice::<HostRecord>(&entry.value)
                .map(|r| r.relay)
                .unwrap_or_default();
            if owner == me || entry.operation != kv::Operation::Put {
                cluster
                    .hosts
                    .update(key, value, entry.revision)
                    .await
                    .map_err(nats)?;
            }
        }
        None => {
            cluster.hosts.put(key, value).await.map_err(nats)?;
        }
    }
    Ok(())
}

/// Writes a deployment's record unless the bucket has a newer one.
async fn put_deployment(cluster: &Cluster, record: &DeploymentRecord) -> Result<(), ClusterError> {
    let key = token(&record.view.deployment_id);
    let value = Bytes::from(serde_json::to_vec(record).map_err(nats)?);
    for _ in 0..5 {
        match cluster.deployments.entry(key.clone()).await.map_err(nats)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let newer = serde_json::from_slice::<DeploymentRecord>(&entry.value)
                    .is_ok_and(|old| old.offset > record.offset);
                if newer {
                    return Ok(());
                }
                if cluster
                    .deployments
                    .update(key.clone(), value.clone(), entry.revision)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            _ => {
                if cluster
                    .deployments
                    .create(key.clone(), value.clone())
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
    }
    Err(ClusterError::Nats(
        "the deployment kept changing under the write".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use o1_common::wire::LogRecord;

    #[test]
    fn names_become_one_token() {
        assert_eq!(token("web-01"), "web-01");
        assert_eq!(token("web.example.com"), "web=2Eexample=2Ecom");
        assert_eq!(token("a b*>"), "a=20b=2A=3E");
        assert_eq!(token(""), "=");
        assert_eq!(token("=2E"), "=3D2E");
        assert_eq!(token("é"), "=C3=A9");
    }

    fn line(app: &str, message: &str) -> Item {
        Item::Log(LogRecord {
            application: app.into(),
            timestamp_ms: 0,
            level: o1_common::Level::Info,
            message: message.into(),
            deployment_id: None,
        })
    }

    #[test]
    fn a_batch_splits_by_kind_and_application_in_order() {
        let items = vec![line("a", "1"), line("b", "2"), line("a", "3")];
        let parts = split(&items);
        assert_eq!(parts.len(), 2);
        assert!(matches!(parts[0].0, Kind::Log("a")));
        assert_eq!(parts[0].1, vec![line("a", "1"), line("a", "3")]);
        assert!(matches!(parts[1].0, Kind::Log("b")));
    }

    #[test]
    fn a_big_batch_splits_under_the_payload_bound() {
        let big = "x".repeat(100 * 1024);
        let items: Vec<Item> = (0..12).map(|_| line("a", &big)).collect();
        let parts = split(&items);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert_eq!(parts.iter().map(|p| p.1.len()).sum::<usize>(), 12);
    }
}
