//! The hub: routes ingested items to subscriptions, keeps recent history.
//!
//! Routing cost is proportional to the subscriptions an item matches: the
//! index is keyed by (host, application) with wildcard slots, so a log line
//! looks at four small lists, not at every connection. Each item is
//! serialized once; every subscriber gets the same `Bytes` and the writer
//! splices its `subscriptionId` in (see [`Outgoing::to_text`]).
//!
//! Lock order, always: `index` → `deployments` → `history`. Routing holds
//! the index read lock while it appends to history and pushes to queues.
//! A `tail` subscription holds the write lock only to insert itself, with a
//! gate that holds back its live lines; it then reads history below a cut
//! (the next sequence) newest first, in short holds of the history lock
//! ([`Hub::scan_newest`]), queues the replay, and opens the gate, dropping
//! the held lines the replay already covered. So a subscriber sees every
//! item exactly once, history then live, and ingest never waits for a
//! replay to be walked.

pub mod direct;
pub mod outbound;
pub mod resume;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use o1_common::api::{
    DeploymentMessage, DeploymentStatus, LogMessage, MetricName, MetricsMessage, NetworkRates,
    ServerMessage, StatusMessage, SubscribeLogs, SubscribeMetrics,
};
use o1_common::matching::{LogFilter, MetricFilter, MetricSelection, lower};
use o1_common::wire::{DeploymentEvent, Item, LogRecord, MetricSample};
use o1_common::{Level, Timestamp};

use crate::auth::Scope;
use crate::deployments::{
    Changed, Deployment, DeploymentError, DeploymentLog, Registry, RegistryLimits, Update,
};
use crate::hub::outbound::{Live, Outbound, Outgoing, SeriesKey, subscription_name};
use crate::store::{Entry, EntryRef, Store, StoreConfig, StoreError};
use crate::telemetry::Stats;

/// `[history]` in the configuration: what the hub keeps in memory, and
/// the history log on disk.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryLimits {
    /// Log lines kept per (host, application) for `tail`.
    pub lines_per_source: usize,
    /// Bytes of serialized lines kept per (host, application).
    pub bytes_per_source: usize,
    /// Longest log line kept and sent; longer ones are cut.
    pub max_line_bytes: usize,
    /// Keep the history log on disk (resume with `since`, restarts). Off:
    /// memory only, as before; `since` then always answers `gap`.
    pub persist: bool,
    /// Directory of the history log.
    pub dir: std::path::PathBuf,
    /// Bytes the log may hold; the oldest segments go first.
    pub disk_bytes: u64,
    /// Age after which a segment goes, seconds.
    pub disk_max_age_secs: u64,
    /// Size of one segment file.
    pub segment_bytes: u64,
    /// Milliseconds between syncs of the log to disk (writes reach the
    /// page cache at once, so a crash of the relay alone loses nothing).
    pub fsync_interval_ms: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            lines_per_source: 1000,
            bytes_per_source: 512 * 1024,
            max_line_bytes: 64 * 1024,
            persist: true,
            dir: std::path::PathBuf::from("/var/lib/o1-relay/history"),
            disk_bytes: 1024 * 1024 * 1024,
            disk_max_age_secs: 7 * 24 * 3600,
            segment_bytes: 16 * 1024 * 1024,
            fsync_interval_ms: 1000,
        }
    }
}

impl HistoryLimits {
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            dir: self.dir.clone(),
            segment_bytes: self.segment_bytes,
            max_bytes: self.disk_bytes,
            max_age: std::time::Duration::from_secs(self.disk_max_age_secs),
            fsync_interval: std::time::Duration::from_millis(self.fsync_interval_ms),
        }
    }
}

/// A subscription as a connection remembers it, to remove it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionHandle {
    pub id: u64,
    kind: HandleKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HandleKind {
    Logs(Option<Arc<str>>, Option<Arc<str>>),
    Metrics(Option<Arc<str>>, Option<Arc<str>>),
    Deployment(String),
}

/// The hosts a subscription may see; `None`: every host (no check).
pub type Visible = Option<Arc<Scope>>;

fn visible(scope: &Visible, host: &str) -> bool {
    scope.as_ref().is_none_or(|s| s.allows(host))
}

#[derive(Debug)]
struct LogSubscription {
    id: u64,
    filter: LogFilter,
    scope: Visible,
    outbound: Arc<Outbound>,
    /// The connection's slot for direct writes, held here so that a
    /// fan-out reads the dense slots, not each connection's queue.
    direct: Option<direct::DirectRef>,
    /// While its replay is being prepared, live lines wait here.
    gate: Option<Arc<ReplayGate>>,
}

/// History lines a filtered replay examines per hold of the history lock.
const SCAN_SLICE: usize = 2048;
/// A filtered replay examines at most this many lines per line it may
/// return: a search that rarely matches replays from the most recent
/// `20 × tail` lines only, so its CPU is bounded by the replay budget.
const SCAN_PER_LINE: usize = 20;

/// Most live lines held back while a replay is prepared; more are dropped
/// and counted.
const GATE_LINES: usize = 4096;

/// Holds a new subscription's live lines until its replay is queued.
#[derive(Debug, Default)]
pub struct ReplayGate {
    /// `None` once open.
    held: Mutex<Option<Held>>,
    /// Full: remember where instead of dropping (the lines are on disk;
    /// a `since` replay reads them again), rather than count them dropped.
    lossless: bool,
}

impl ReplayGate {
    pub fn closed() -> Arc<ReplayGate> {
        Arc::new(ReplayGate::default().close())
    }

    /// A gate that never loses a line: past [`GATE_LINES`] it notes the
    /// first offset it could not hold ([`Hub::open_gate_lossless`]).
    pub fn lossless() -> Arc<ReplayGate> {
        Arc::new(
            ReplayGate {
                lossless: true,
                ..ReplayGate::default()
            }
            .close(),
        )
    }

    fn close(self) -> Self {
        *self.held.lock() = Some(Held::default());
        self
    }
}

/// Lines a gate holds back, with their history sequence; how many it
/// dropped; the first offset a lossless gate could not hold.
#[derive(Debug, Default)]
struct Held {
    lines: Vec<(u64, Outgoing)>,
    dropped: u64,
    overflow_from: Option<u64>,
}

impl LogSubscription {
    /// Queues (or holds at the gate) a live line; `true` when it was
    /// written to the socket at once (`alone`: the only item of its batch).
    fn deliver(&self, sequence: u64, line: Live<'_>) -> bool {
        if let Some(gate) = &self.gate {
            let mut held = gate.held.lock();
            if let Some(held) = held.as_mut() {
                if held.overflow_from.is_some() {
                    // Past an overflow nothing is kept: it all comes from disk.
                } else if held.lines.len() < GATE_LINES {
                    held.lines.push((sequence, line.to_outgoing(self.id)));
                } else if gate.lossless {
                    held.overflow_from = Some(sequence);
                } else {
                    held.dropped += 1;
                }
                return false;
            }
        }
        self.outbound
            .push_live_via(self.direct.as_ref(), self.id, line)
    }
}

#[derive(Debug)]
struct MetricSubscription {
    id: u64,
    filter: MetricFilter,
    scope: Visible,
    outbound: Arc<Outbound>,
}

#[derive(Debug)]
struct DeploymentSubscription {
    id: u64,
    scope: Visible,
    outbound: Arc<Outbound>,
}

/// Subscriptions keyed by the host and application they ask for.
#[derive(Debug)]
struct SourceIndex<S> {
    exact: HashMap<Arc<str>, HashMap<Arc<str>, Vec<S>>>,
    by_host: HashMap<Arc<str>, Vec<S>>,
    by_application: HashMap<Arc<str>, Vec<S>>,
    any: Vec<S>,
}

impl<S> Default for SourceIndex<S> {
    fn default() -> Self {
        SourceIndex {
            exact: HashMap::new(),
            by_host: HashMap::new(),
            by_application: HashMap::new(),
            any: Vec::new(),
        }
    }
}

trait HasId {
    fn id(&self) -> u64;
    /// Asks the CPU to fetch what routing to this subscription reads first
    /// (its connection's queue), while the previous one is being written.
    fn prefetch_outbound(&self) {}
}
impl HasId for LogSubscription {
    fn id(&self) -> u64 {
        self.id
    }
    fn prefetch_outbound(&self) {
        match &self.direct {
            Some(direct) => direct.prefetch(),
            None => self.outbound.prefetch(),
        }
    }
}

/// Fewest subscribers per thread in one routing pass: below it starting a
/// thread (~30 µs) costs more than the writes it takes over.
const FANOUT_PER_THREAD_MIN: usize = 256;

/// Runs `deliver` over every list of `lists`, split across up to
/// `threads` threads (the calling one and scoped helpers) when there are
/// enough subscribers: a line written at once to 1,000 sockets is ~6 ms
/// of `writev`s one after the other, the tail of the fan-out's latency.
/// Every helper is joined before this returns, so the next routing pass
/// cannot overtake this one on any connection. Returns the sum of what
/// `deliver` returned.
fn fan_out<S: Sync>(lists: [&[S]; 4], threads: usize, deliver: impl Fn(&[S]) -> u64 + Sync) -> u64 {
    let total: usize = lists.iter().map(|list| list.len()).sum();
    let threads = threads.min(total / FANOUT_PER_THREAD_MIN).max(1);
    if threads == 1 {
        return lists.iter().map(|list| deliver(list)).sum();
    }
    // Part k of every list goes to thread k.
    let part = |k: usize| -> u64 {
        lists
            .iter()
            .map(|list| {
                let size = list.len().div_ceil(threads);
                let end = ((k + 1) * size).min(list.len());
                deliver(list.get(k * size..end).unwrap_or(&[]))
            })
            .sum()
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map(|k| {
                std::thread::Builder::new()
                    .name("o1-fanout".into())
                    .spawn_scoped(scope, move || part(k))
                    .map_err(|_| k)
            })
            .collect();
        let mut sum = part(0);
        for helper in helpers {
            sum += match helper {
                Ok(helper) => helper.join().unwrap_or(0),
                // No thread to be had: this one writes that part too.
                Err(k) => part(k),
            };
        }
        sum
    })
}

/// Calls `f` on each of `list`, fetching ahead: the next subscription's
/// connection and the one after's entry. In a fan-out each delivery is a
/// `writev` whose kernel path evicts the router's data from the caches, so
/// without this every subscriber costs several cache (and TLB) misses in a
/// row; with it they overlap the previous subscriber's write
/// (BENCHMARKS.md, "Paced fan-out").
fn each_fetching_ahead<S: HasId>(list: &[S], f: &mut impl FnMut(&S)) {
    for (i, subscription) in list.iter().enumerate() {
        if let Some(after) = list.get(i + 4) {
            crate::prefetch::read_all(after);
        }
        if let Some(next) = list.get(i + 2) {
            next.prefetch_outbound();
        }
        f(subscription);
    }
}
impl HasId for MetricSubscription {
    fn id(&self) -> u64 {
        self.id
    }
}

impl<S: HasId> SourceIndex<S> {
    fn insert(&mut self, host: Option<&Arc<str>>, application: Option<&Arc<str>>, subscription: S) {
        let slot = match (host, application) {
            (Some(h), Some(a)) => self
                .exact
                .entry(h.clone())
                .or_default()
                .entry(a.clone())
                .or_default(),
            (Some(h), None) => self.by_host.entry(h.clone()).or_default(),
            (None, Some(a)) => self.by_application.entry(a.clone()).or_default(),
            (None, None) => &mut self.any,
        };
        slot.push(subscription);
    }

    /// Applies `f` to the subscription `id` registered under this key.
    fn for_each_mut(
        &mut self,
        host: Option<&str>,
        application: Option<&str>,
        id: u64,
        f: impl FnOnce(&mut S),
    ) {
        let list = match (host, application) {
            (Some(h), Some(a)) => self.exact.get_mut(h).and_then(|apps| apps.get_mut(a)),
            (Some(h), None) => self.by_host.get_mut(h),
            (None, Some(a)) => self.by_application.get_mut(a),
            (None, None) => Some(&mut self.any),
        };
        if let Some(subscription) = list.and_then(|l| l.iter_mut().find(|s| s.id() == id)) {
            f(subscription);
        }
    }

    fn remove(&mut self, host: Option<&str>, application: Option<&str>, id: u64) {
        fn retain<S: HasId>(list: &mut Vec<S>, id: u64) -> bool {
            list.retain(|s| s.id() != id);
            list.is_empty()
        }
        match (host, application) {
            (Some(h), Some(a)) => {
                if let Some(apps) = self.exact.get_mut(h) {
                    if apps.get_mut(a).is_some_and(|list| retain(list, id)) {
                        apps.remove(a);
                    }
                    if apps.is_empty() {
                        self.exact.remove(h);
                    }
                }
            }
            (Some(h), None) => {
                if self.by_host.get_mut(h).is_some_and(|list| retain(list, id)) {
                    self.by_host.remove(h);
                }
            }
            (None, Some(a)) => {
                if self
                    .by_application
                    .get_mut(a)
                    .is_some_and(|list| retain(list, id))
                {
                    self.by_application.remove(a);
                }
            }
            (None, None) => {
                retain(&mut self.any, id);
            }
        }
    }

    /// The lists whose subscriptions may want a line of (host,
    /// application): exact, by host, by application, any.
    fn candidate_lists(&self, host: &str, application: &str) -> [&[S]; 4] {
        [
            self.exact
                .get(host)
                .and_then(|apps| apps.get(application))
                .map_or(&[][..], Vec::as_slice),
            self.by_host.get(host).map_or(&[][..], Vec::as_slice),
            self.by_application
                .get(application)
                .map_or(&[][..], Vec::as_slice),
            &self.any,
        ]
    }

    fn for_each_candidate(&self, host: &str, application: &str, mut f: impl FnMut(&S)) {
        for list in self.candidate_lists(host, application) {
            each_fetching_ahead(list, &mut f);
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.by_host.is_empty()
            && self.by_application.is_empty()
            && self.any.is_empty()
    }
}

#[derive(Debug, Default)]
struct Index {
    logs: SourceIndex<LogSubscription>,
    metrics: SourceIndex<MetricSubscription>,
    deployments: HashMap<String, Vec<DeploymentSubscription>>,
}

#[derive(Debug)]
struct HistoryLine {
    sequence: u64,
    level: Level,
    message: String,
    body: Bytes,
}

#[derive(Debug)]
struct Source {
    host: Arc<str>,
    application: Arc<str>,
    lines: VecDeque<Arc<HistoryLine>>,
    line_bytes: usize,
    latest_metric: Option<MetricsMessage>,
    /// One sample per `HISTORY_STEP_SECS`, the last `MAX_HISTORY_SECS`.
    metric_history: VecDeque<MetricsMessage>,
}

#[derive(Debug, Default)]
struct History {
    sources: HashMap<String, HashMap<String, Source>>,
    next_sequence: u64,
}

impl History {
    fn source(&mut self, host: &str, application: &str) -> &mut Source {
        let apps = self.sources.entry(host.to_owned()).or_default();
        if !apps.contains_key(application) {
            apps.insert(
                application.to_owned(),
                Source {
                    host: Arc::from(host),
                    application: Arc::from(application),
                    lines: VecDeque::new(),
                    line_bytes: 0,
                    latest_metric: None,
                    metric_history: VecDeque::new(),
                },
            );
        }
        // Inserted just above when missing.
        apps.get_mut(application).unwrap_or_else(|| unreachable!())
    }

    fn matching_sources<'a>(
        &'a self,
        host: Option<&'a str>,
        application: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Source> + 'a {
        self.sources
            .iter()
            .filter(move |(h, _)| host.is_none_or(|want| want == h.as_str()))
            .flat_map(move |(_, apps)| {
                apps.iter()
                    .filter(move |(a, _)| application.is_none_or(|want| want == a.as_str()))
                    .map(|(_, source)| source)
            })
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("Deployment not found")]
    DeploymentNotFound,
    #[error("This credential does not cover every host of this deployment")]
    Forbidden,
}

/// One copy of every name subscriptions use, however many subscriptions
/// name it (a filter, its index slot and its handle share it too).
#[derive(Debug, Default)]
struct Names {
    names: std::collections::HashSet<Arc<str>>,
    /// Size after the last sweep of names no longer used.
    swept_at: usize,
}

impl Names {
    fn intern(&mut self, name: Arc<str>) -> Arc<str> {
        if let Some(existing) = self.names.get(&name) {
            return existing.clone();
        }
        if self.names.len() >= 2 * self.swept_at + 1024 {
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.swept_at = self.names.len();
        }
        self.names.insert(name.clone());
        name
    }
}

#[derive(Debug)]
pub struct Hub {
    names: Mutex<Names>,
    index: RwLock<Index>,
    deployments: Mutex<Registry>,
    history: Mutex<History>,
    limits: HistoryLimits,
    next_subscription: AtomicU64,
    pub stats: Arc<Stats>,
    /// The history log on disk (`None`: memory only, for unit tests).
    store: Option<Store>,
    /// The publish order, and the next offset: held while a change is
    /// appended and routed, so offsets, the log and every subscriber see
    /// changes in one order.
    order: Mutex<u64>,
    epoch: AtomicU64,
    /// Threads a large fan-out of one line is split across
    /// (`websocket.fanout_threads`).
    fanout_threads: std::sync::atomic::AtomicUsize,
    /// The connections' slots for direct writes (see [`direct`]).
    direct_slots: Arc<direct::DirectSlots>,
    /// Clustered: the stream this hub follows (see [`crate::journal`]).
    cluster: Option<Arc<crate::cluster::ClusterLink>>,
    /// Clustered: the offset after the last change applied (set before it
    /// is routed, as the disk log's end is).
    committed_end: AtomicU64,
    /// Agents' high-water marks found in the log, for the uplink to take.
    high_water: Mutex<HashMap<String, u64>>,
}

/// Why a change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot append to the history log: {0}")]
    Store(#[from] StoreError),
}

fn serialize(message: &ServerMessage) -> Bytes {
    Bytes::from(message.to_json())
}

impl Hub {
    pub fn new(stats: Arc<Stats>, limits: HistoryLimits, registry: RegistryLimits) -> Self {
        Hub {
            names: Mutex::new(Names::default()),
            index: RwLock::new(Index::default()),
            deployments: Mutex::new(Registry::new(registry)),
            history: Mutex::new(History::default()),
            limits,
            next_subscription: AtomicU64::new(1),
            stats,
            store: None,
            order: Mutex::new(0),
            epoch: AtomicU64::new((rand::random::<u64>() & ((1 << 53) - 1)).max(1)),
            fanout_threads: std::sync::atomic::AtomicUsize::new(1),
            direct_slots: direct::DirectSlots::new(),
            cluster: None,
            committed_end: AtomicU64::new(0),
            high_water: Mutex::new(HashMap::new()),
        }
    }

    /// A hub over the history log in `store`: rebuilds history, latest
    /// metrics, deployments and the agents' high-water marks from it.
    pub fn open(
        stats: Arc<Stats>,
        limits: HistoryLimits,
        registry: RegistryLimits,
        store: StoreConfig,
    ) -> Result<Self, StoreError> {
        let mut hub = Hub::new(stats, limits, registry);
        let nobody = Index::default();
        let mut marks: HashMap<String, u64> = HashMap::new();
        let mut records = 0u64;
        let started = Instant::now();
        let store = Store::open(store, |record| {
            if let Entry::Batch {
                agent_id, sequence, ..
            } = &record.entry
                && !agent_id.is_empty()
            {
                let mark = marks.entry(agent_id.clone()).or_default();
                *mark = (*mark).max(*sequence);
            }
            hub.apply(
                &nobody,
                record.offset,
                record.at_ms,
                record.entry.as_ref(),
                &Scope::all(),
                Instant::now(),
            );
            records += 1;
        })?;
        *hub.epoch.get_mut() = store.epoch();
        *hub.order.get_mut() = store.next_offset();
        tracing::info!(
            records,
            next_offset = store.next_offset(),
            oldest_offset = store.oldest_offset(),
            epoch = store.epoch(),
            millis = started.elapsed().as_millis() as u64,
            "history log recovered"
        );
        hub.store = Some(store);
        *hub.high_water.get_mut() = marks;
        Ok(hub)
    }

    /// The history's epoch (`subscribed.epoch`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// A hub that applies what the cluster stream holds (see
    /// [`crate::journal`]): nothing is appended or routed here directly.
    pub fn clustered(
        stats: Arc<Stats>,
        limits: HistoryLimits,
        registry: RegistryLimits,
        cluster: Arc<crate::cluster::ClusterLink>,
    ) -> Self {
        Hub {
            cluster: Some(cluster),
            ..Hub::new(stats, limits, registry)
        }
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterLink>> {
        self.cluster.as_ref()
    }

    /// Splits the fan-out of a line to many subscribers across up to
    /// `threads` threads (at least 1).
    pub fn set_fanout_threads(&self, threads: usize) {
        self.fanout_threads.store(threads.max(1), Ordering::Relaxed);
    }

    fn fanout_threads(&self) -> usize {
        self.fanout_threads.load(Ordering::Relaxed)
    }

    /// A slot for direct writes to a connection's plain TCP socket (a
    /// duplicate descriptor of it).
    pub fn claim_direct(&self, socket: std::net::TcpStream) -> direct::DirectClaim {
        self.direct_slots.claim(socket)
    }

    /// The cluster stream's epoch, once known.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The offset after the last change applied: a `since` replay reads
    /// below it from the journal, the rest arrives live.
    pub fn log_end(&self) -> u64 {
        match (&self.store, &self.cluster) {
            (Some(store), _) => store.next_offset(),
            (None, Some(_)) => self.committed_end.load(Ordering::Acquire),
            (None, None) => 0,
        }
    }

    /// Applies one change the cluster stream holds at `offset` (its items
    /// up to `end`), in stream order; returns the views of the
    /// deployments it changed.
    pub fn apply_committed(
        &self,
        offset: u64,
        end: u64,
        at_ms: i64,
        entry: EntryRef<'_>,
    ) -> Vec<o1_common::rest::DeploymentView> {
        let mut order = self.order.lock();
        *order = end;
        self.committed_end.store(end, Ordering::Release);
        let index = self.read_index();
        let errors = self.apply(&index, offset, at_ms, entry, &Scope::all(), Instant::now());
        drop(index);
        drop(order);
        let mut touched: Vec<&str> = match entry {
            EntryRef::Batch { items, .. } => {
                self.stats.items_ingested.inc_by(items.len() as u64);
                items
                    .iter()
                    .filter_map(|item| match item {
                        Item::Deployment(event) => Some(event.deployment_id.as_str()),
                        Item::Log(line) => line.deployment_id.as_deref(),
                        Item::Metric(_) => None,
                    })
                    .collect()
            }
            EntryRef::Created { deployment_id, .. } | EntryRef::Updated { deployment_id, .. } => {
                vec![deployment_id]
            }
        };
        self.stats.processing_errors.inc_by(errors);
        if touched.is_empty() {
            return Vec::new();
        }
        touched.sort_unstable();
        touched.dedup();
        let registry = self.lock_deployments();
        touched
            .into_iter()
            .filter_map(|id| registry.get(id).map(Deployment::view))
            .collect()
    }

    /// Puts back a deployment the cluster's bucket holds.
    pub fn restore_deployment(&self, view: o1_common::rest::DeploymentView, offset: u64) {
        self.lock_deployments().restore(view, offset);
    }

    /// Whether `create` would be accepted now, and the id it would take
    /// (generated when `None`), without keeping it.
    pub fn check_create(
        &self,
        id: Option<String>,
        application: String,
        hosts: Vec<String>,
        message: Option<String>,
        now: Timestamp,
    ) -> Result<Deployment, DeploymentError> {
        let mut registry = self.lock_deployments();
        let deployment = registry.create(id, application, hosts, message, now)?;
        registry.remove(&deployment.deployment_id);
        Ok(deployment)
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The agents' high-water marks recovered from the log (taken once).
    pub fn take_high_water(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.high_water.lock())
    }

    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }
    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write()
    }
    fn lock_history(&self) -> MutexGuard<'_, History> {
        self.history.lock()
    }
    pub fn lock_deployments(&self) -> MutexGuard<'_, Registry> {
        self.deployments.lock()
    }

    /// The shared copy of `name`.
    fn intern(&self, name: Option<Arc<str>>) -> Option<Arc<str>> {
        let name = name?;
        Some(self.names.lock().intern(name))
    }

    pub(crate) fn new_subscription_id(&self) -> u64 {
        self.next_subscription.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes to logs. `ack` is queued first, then up to `tail` recent
    /// matching lines, then live lines.
    ///
    /// `allowance` is how many lines the connection may still replay (its
    /// replay budget); matching lines beyond it are counted as dropped.
    pub fn subscribe_logs(
        &self,
        request: &SubscribeLogs,
        scope: Visible,
        outbound: &Arc<Outbound>,
        ack: impl FnOnce(u64) -> Outgoing,
        allowance: usize,
    ) -> SubscriptionHandle {
        let id = self.new_subscription_id();
        let filter = self.log_filter(request);
        // At most what one source keeps: a larger tail could never return
        // more lines of it.
        let wanted = (request.tail.unwrap_or(0) as usize).min(self.limits.lines_per_source);
        // Over the connection's replay budget: the newest lines it allows;
        // with none left, no history is walked at all.
        let tail = wanted.min(allowance);
        if wanted > tail {
            outbound.count_dropped(id, (wanted - tail) as u64);
        }
        let gate = (tail > 0).then(ReplayGate::closed);
        // Registered first, with a closed gate: O(1) under the index lock.
        let handle = self.register_logs(
            id,
            &filter,
            scope.clone(),
            outbound,
            gate.clone(),
            Some(ack(id)),
        );
        // The seam: lines before `cut` come from history, lines from `cut`
        // on through the gate (every one of those was routed to the
        // subscription, registered before `cut` was read).
        let (cut, keys): (u64, Vec<(String, String)>) = if tail == 0 {
            (0, Vec::new())
        } else {
            let history = self.lock_history();
            let keys = history
                .matching_sources(filter.host.as_deref(), filter.application.as_deref())
                .filter(|source| visible(&scope, &source.host))
                .map(|source| (source.host.to_string(), source.application.to_string()))
                .collect();
            (history.next_sequence, keys)
        };
        if let Some(gate) = gate {
            // Newest first across the sources, in short holds of the
            // history lock; matching (when the filter has a level or a
            // search) happens line by line and stops after `tail` matches.
            let replay = self.scan_newest(&keys, cut, tail, |line| {
                filter.content_matches(line.level, &line.message)
            });
            for line in replay.into_iter().rev() {
                outbound.push_log(Outgoing {
                    subscription: id,
                    body: line.body.clone(),
                    ingested_at: None,
                });
            }
            Self::open_gate(&gate, cut, outbound, id);
            self.ungate(&handle, &gate);
        }
        handle
    }

    /// The filter of a log subscription, its names shared.
    pub(crate) fn log_filter(&self, request: &SubscribeLogs) -> LogFilter {
        let mut filter = LogFilter::from_request(request);
        filter.host = self.intern(filter.host);
        filter.application = self.intern(filter.application);
        filter
    }

    /// Registers log subscription `id` (O(1) under the index lock); `ack`
    /// is queued under that lock, before any live line. With a `gate`,
    /// live lines wait in it until [`Hub::open_gate`].
    pub(crate) fn register_logs(
        &self,
        id: u64,
        filter: &LogFilter,
        scope: Visible,
        outbound: &Arc<Outbound>,
        gate: Option<Arc<ReplayGate>>,
        ack: Option<Outgoing>,
    ) -> SubscriptionHandle {
        let mut index = self.write_index();
        if let Some(ack) = ack {
            outbound.push_reply(ack);
        }
        insert_logs(&mut index, id, filter, scope, outbound, gate)
    }

    /// Queues what `gate` held back from `cut` on (older lines were
    /// replayed already) and opens it. Under the gate's lock: a live line
    /// routed meanwhile waits, so it can never overtake the held ones.
    pub(crate) fn open_gate(gate: &ReplayGate, cut: u64, outbound: &Outbound, id: u64) {
        let mut held = gate.held.lock();
        if let Some(held) = held.take() {
            for (_, line) in held
                .lines
                .into_iter()
                .filter(|(sequence, _)| *sequence >= cut)
            {
                outbound.push_log(line);
            }
            outbound.count_dropped(id, held.dropped);
        }
    }

    /// Opens a lossless gate: queues what it held from `cut` on. `Some(x)`
    /// when it overflowed at offset `x`: it then stays closed and queues
    /// only what is before `x`; the caller replays from `x` on from disk
    /// and puts a fresh gate in with [`Hub::regate`].
    pub(crate) fn open_gate_lossless(
        gate: &ReplayGate,
        cut: u64,
        outbound: &Outbound,
    ) -> Option<u64> {
        let mut held = gate.held.lock();
        let taken = held.take()?;
        let overflow = taken.overflow_from;
        if overflow.is_some() {
            // Closed for good: later lines go to the next gate.
            *held = Some(Held {
                overflow_from: overflow,
                ..Held::default()
            });
        }
        for (_, line) in taken
            .lines
            .into_iter()
            .filter(|(sequence, _)| *sequence >= cut && overflow.is_none_or(|x| *sequence < x))
        {
            outbound.push_log(line);
        }
        overflow
    }

    /// Gives subscription `handle` a fresh lossless gate, and returns it
    /// with the log's next offset, read under the index lock.
    pub(crate) fn regate(&self, handle: &SubscriptionHandle) -> (Arc<ReplayGate>, u64) {
        let gate = ReplayGate::lossless();
        let mut index = self.write_index();
        let cut = self.log_end();
        if let HandleKind::Logs(host, application) = &handle.kind {
            index
                .logs
                .for_each_mut(host.as_deref(), application.as_deref(), handle.id, |s| {
                    s.gate = Some(gate.clone());
                });
        }
        (gate, cut)
    }

    /// Takes an open gate out of its subscription's entry: every line
    /// routed to it after this reads one fewer allocation (and takes no
    /// lock) on its way to the socket. A gate put in since (see
    /// [`Hub::regate`]) stays.
    pub(crate) fn ungate(&self, handle: &SubscriptionHandle, gate: &Arc<ReplayGate>) {
        let mut index = self.write_index();
        if let HandleKind::Logs(host, application) = &handle.kind {
            index
                .logs
                .for_each_mut(host.as_deref(), application.as_deref(), handle.id, |s| {
                    if s.gate.as_ref().is_some_and(|g| Arc::ptr_eq(g, gate)) {
                        s.gate = None;
                    }
                });
        }
    }

    /// `register_logs` with a closed gate, returning the store's next
    /// offset read under the index lock: lines below it are on disk, lines
    /// from it on reach the gate.
    pub(crate) fn register_logs_at_cut(
        &self,
        id: u64,
        filter: &LogFilter,
        scope: Visible,
        outbound: &Arc<Outbound>,
        gate: Arc<ReplayGate>,
    ) -> (SubscriptionHandle, u64) {
        let mut index = self.write_index();
        let cut = self.log_end();
        let handle = insert_logs(&mut index, id, filter, scope, outbound, Some(gate));
        (handle, cut)
    }

    /// The `log` messages of `records` from offset `from` on that `filter`
    /// and `scope` let through, serialized as live routing does.
    pub(crate) fn replay_lines(
        &self,
        records: &[crate::store::Record],
        from: u64,
        filter: &LogFilter,
        scope: &Visible,
    ) -> Vec<Bytes> {
        let mut out = Vec::new();
        for record in records {
            let Entry::Batch { host, items, .. } = &record.entry else {
                continue;
            };
            if !visible(scope, host) || filter.host.as_deref().is_some_and(|h| h != host) {
                continue;
            }
            for (i, item) in items.iter().enumerate() {
                let offset = record.offset + i as u64;
                let Item::Log(line) = item else { continue };
                if offset < from
                    || !filter.source_matches(host, &line.application)
                    || !filter.content_matches(line.level, &line.message)
                {
                    continue;
                }
                out.push(self.log_body(host, line, offset));
            }
        }
        out
    }

    /// The `log` message of a line (cut to `max_line_bytes`), serialized.
    fn log_body(&self, host: &str, record: &LogRecord, offset: u64) -> Bytes {
        let message = if record.message.len() > self.limits.max_line_bytes {
            o1_common::text::cut(record.message.clone(), self.limits.max_line_bytes)
        } else {
            record.message.clone()
        };
        serialize(&ServerMessage::Log(LogMessage {
            subscription_id: None,
            deployment_id: record.deployment_id.clone(),
            host: host.to_owned(),
            application: record.application.clone(),
            level: record.level,
            message,
            timestamp: Timestamp::from_unix_millis(record.timestamp_ms),
            offset: Some(offset),
        }))
    }

    /// The newest `n` lines before `cut` that pass `keep`, newest first,
    /// across the sources `keys`: a k-way merge by sequence, run in slices
    /// of [`SCAN_SLICE`] lines per hold of the history lock (positions are
    /// found again by sequence after each release), at most
    /// [`SCAN_PER_LINE`] × `n` lines in all.
    fn scan_newest(
        &self,
        keys: &[(String, String)],
        cut: u64,
        n: usize,
        keep: impl Fn(&HistoryLine) -> bool,
    ) -> Vec<Arc<HistoryLine>> {
        // Per source: examine lines with a sequence below this; `None`
        // once the source is exhausted.
        let mut below: Vec<Option<u64>> = vec![Some(cut); keys.len()];
        let mut picked = Vec::new();
        let mut scanned = 0usize;
        let limit = n.saturating_mul(SCAN_PER_LINE);
        while picked.len() < n && scanned < limit {
            let history = self.lock_history();
            let lists: Vec<Option<&VecDeque<Arc<HistoryLine>>>> = keys
                .iter()
                .map(|(h, a)| Some(&history.sources.get(h)?.get(a)?.lines))
                .collect();
            let mut heap = std::collections::BinaryHeap::new();
            for (i, list) in lists.iter().enumerate() {
                let (Some(list), Some(limit)) = (list, below[i]) else {
                    below[i] = None;
                    continue;
                };
                let position = list.partition_point(|line| line.sequence < limit);
                match position.checked_sub(1) {
                    Some(p) => heap.push((list[p].sequence, i, p)),
                    None => below[i] = None,
                }
            }
            if heap.is_empty() {
                break;
            }
            let mut slice = 0;
            while slice < SCAN_SLICE && picked.len() < n && scanned < limit {
                let Some((sequence, i, p)) = heap.pop() else {
                    break;
                };
                let Some(list) = lists[i] else { continue };
                slice += 1;
                scanned += 1;
                below[i] = Some(sequence);
                if keep(&list[p]) {
                    picked.push(list[p].clone());
                }
                match p.checked_sub(1) {
                    Some(p) => heap.push((list[p].sequence, i, p)),
                    None => below[i] = None,
                }
            }
            drop(history);
            // Let routing take the lock between slices.
            std::thread::yield_now();
        }
        picked
    }

    /// Subscribes to metrics; the latest sample of every matching series is
    /// queued at once after `ack`.
    pub fn subscribe_metrics(
        &self,
        request: &SubscribeMetrics,
        scope: Visible,
        outbound: &Arc<Outbound>,
        ack: impl FnOnce(u64) -> Outgoing,
    ) -> SubscriptionHandle {
        let id = self.new_subscription_id();
        let mut filter = MetricFilter::from_request(request);
        filter.host = self.intern(filter.host);
        filter.application = self.intern(filter.application);
        let mut index = self.write_index();
        outbound.push_reply(ack(id));
        // Past samples first (a chart opens full), oldest first, each
        // series on its own; droppable like log lines.
        let since_ms = request.history.map(|seconds| {
            Timestamp::now().unix_millis
                - i64::from(seconds.min(o1_common::api::MAX_HISTORY_SECS)) * 1000
        });
        {
            let history = self.lock_history();
            for source in history
                .matching_sources(filter.host.as_deref(), filter.application.as_deref())
                .filter(|source| visible(&scope, &source.host))
            {
                if let Some(since_ms) = since_ms {
                    let latest_at = source.latest_metric.as_ref().map(|m| m.timestamp);
                    for sample in source.metric_history.iter().filter(|m| {
                        m.timestamp.unix_millis >= since_ms && Some(m.timestamp) != latest_at
                    }) {
                        outbound.push_log(Outgoing {
                            subscription: id,
                            body: serialize(&ServerMessage::Metrics(select_metrics(
                                sample,
                                filter.selection,
                            ))),
                            ingested_at: None,
                        });
                    }
                }
                if let Some(latest) = &source.latest_metric {
                    let body = serialize(&ServerMessage::Metrics(select_metrics(
                        latest,
                        filter.selection,
                    )));
                    outbound.push_metric(
                        SeriesKey {
                            subscription: id,
                            host: source.host.clone(),
                            application: source.application.clone(),
                        },
                        Outgoing {
                            subscription: id,
                            body,
                            ingested_at: None,
                        },
                    );
                }
            }
        }
        let handle = SubscriptionHandle {
            id,
            kind: HandleKind::Metrics(filter.host.clone(), filter.application.clone()),
        };
        index.metrics.insert(
            filter.host.clone().as_ref(),
            filter.application.clone().as_ref(),
            MetricSubscription {
                id,
                filter,
                scope,
                outbound: outbound.clone(),
            },
        );
        handle
    }

    /// Subscribes to a deployment: `ack`, its current state, its recent log
    /// lines, its final status if it has ended, then live updates.
    pub fn subscribe_deployment(
        &self,
        deployment_id: &str,
        since: Option<o1_common::api::Since>,
        scope: Visible,
        outbound: &Arc<Outbound>,
        ack: impl FnOnce(u64) -> Outgoing,
    ) -> Result<SubscriptionHandle, SubscribeError> {
        let mut index = self.write_index();
        let registry = self.lock_deployments();
        let Some(deployment) = registry.get(deployment_id) else {
            return Err(SubscribeError::DeploymentNotFound);
        };
        if scope.as_ref().is_some_and(|s| !s.covers(&deployment.hosts)) {
            return Err(SubscribeError::Forbidden);
        }
        let id = self.new_subscription_id();
        outbound.push_reply(ack(id));
        let reply = |message: ServerMessage| Outgoing {
            subscription: id,
            body: serialize(&message),
            ingested_at: None,
        };
        // Resuming: only what changed after `since` (of this epoch); a
        // `gap` first when lines after it are no longer kept.
        let after = since.filter(|s| s.epoch == self.epoch()).map(|s| s.offset);
        let gap = match (since, after) {
            (Some(_), None) => true,
            (_, Some(after)) => deployment.evicted_through.is_some_and(|e| e > after),
            (None, None) => false,
        };
        if gap {
            outbound.push_reply(reply(ServerMessage::Gap(o1_common::api::Gap {
                subscription_id: subscription_name(id),
                missed: None,
                timestamp: Timestamp::now(),
            })));
        }
        let changed = after.is_none_or(|after| deployment.offset > after);
        if changed {
            outbound.push_reply(reply(deployment_message(deployment)));
        }
        // Each line was serialized once, when it arrived; every replay
        // shares those bytes, and lines over the budget are dropped and
        // counted like live ones.
        for log in deployment
            .logs
            .iter()
            .filter(|l| visible(&scope, &l.host) && after.is_none_or(|after| l.offset > after))
        {
            outbound.push_log(Outgoing {
                subscription: id,
                body: log.body.clone(),
                ingested_at: None,
            });
        }
        if deployment.status.is_final() && changed {
            outbound.push_reply(reply(status_message(deployment)));
        }
        drop(registry);
        index
            .deployments
            .entry(deployment_id.to_owned())
            .or_default()
            .push(DeploymentSubscription {
                id,
                scope,
                outbound: outbound.clone(),
            });
        Ok(SubscriptionHandle {
            id,
            kind: HandleKind::Deployment(deployment_id.to_owned()),
        })
    }

    pub fn unsubscribe(&self, handle: &SubscriptionHandle) {
        let mut index = self.write_index();
        match &handle.kind {
            HandleKind::Logs(host, app) => {
                index
                    .logs
                    .remove(host.as_deref(), app.as_deref(), handle.id)
            }
            HandleKind::Metrics(host, app) => {
                index
                    .metrics
                    .remove(host.as_deref(), app.as_deref(), handle.id)
            }
            HandleKind::Deployment(deployment_id) => {
                if let Some(list) = index.deployments.get_mut(deployment_id) {
                    list.retain(|s| s.id != handle.id);
                    if list.is_empty() {
                        index.deployments.remove(deployment_id);
                    }
                }
            }
        }
    }

    /// Whether no subscription at all is registered (for tests and stats).
    pub fn has_no_subscriptions(&self) -> bool {
        let index = self.read_index();
        index.logs.is_empty() && index.metrics.is_empty() && index.deployments.is_empty()
    }

    /// Routes the items of one batch from `host`. Returns how many items
    /// could not be processed (invalid deployment events).
    pub fn publish(&self, host: &str, items: &[Item], ingested_at: Instant, now: Timestamp) -> u64 {
        self.publish_batch(host, "", 0, items, &Scope::all(), ingested_at, now)
            .unwrap_or_else(|error| {
                tracing::error!(%error, "history log append failed");
                items.len() as u64
            })
    }

    /// Appends one batch of agent `agent_id` to the history log, then
    /// routes it, under the publish order. `writer` is what the sender's
    /// credential covers: it may change only deployments whose hosts it
    /// covers (its lines still reach the host's log stream, without
    /// joining the deployment). Returns how many items could not be
    /// processed; `Err` when the log could not take the batch (nothing was
    /// routed: the agent must not be acked).
    #[allow(clippy::too_many_arguments)]
    pub fn publish_batch(
        &self,
        host: &str,
        agent_id: &str,
        sequence: u64,
        items: &[Item],
        writer: &Scope,
        ingested_at: Instant,
        now: Timestamp,
    ) -> Result<u64, PublishError> {
        let entry = EntryRef::Batch {
            host,
            agent_id,
            sequence,
            items,
        };
        let mut order = self.order.lock();
        let offset = *order;
        if let Some(store) = &self.store {
            store.append(now.unix_millis, entry)?;
        }
        *order += entry.offsets();
        let index = self.read_index();
        let errors = self.apply(&index, offset, now.unix_millis, entry, writer, ingested_at);
        drop(index);
        drop(order);
        self.stats.items_ingested.inc_by(items.len() as u64);
        self.stats.processing_errors.inc_by(errors);
        Ok(errors)
    }

    /// Applies one change at `offset`: routes a batch's items, creates or
    /// updates a deployment. Live and when the log is read at start.
    fn apply(
        &self,
        index: &Index,
        offset: u64,
        at_ms: i64,
        entry: EntryRef<'_>,
        writer: &Scope,
        ingested_at: Instant,
    ) -> u64 {
        let now = Timestamp::from_unix_millis(at_ms);
        match entry {
            EntryRef::Batch { host, items, .. } => {
                let mut errors = 0;
                for (i, item) in items.iter().enumerate() {
                    let offset = offset + i as u64;
                    let routed = match item {
                        Item::Log(record) => {
                            let alone = items.len() == 1;
                            self.route_log(
                                index,
                                host,
                                record,
                                writer,
                                offset,
                                (ingested_at, alone),
                            )
                        }
                        Item::Metric(sample) => {
                            self.route_metric(index, host, sample, ingested_at);
                            Ok(())
                        }
                        Item::Deployment(event) => {
                            self.route_deployment_event(index, host, event, writer, offset, now)
                        }
                    };
                    if let Err(error) = routed {
                        errors += 1;
                        tracing::debug!(%host, %error, "deployment event refused");
                    }
                }
                errors
            }
            EntryRef::Created {
                deployment_id,
                application,
                hosts,
                message,
            } => {
                let mut registry = self.lock_deployments();
                if registry
                    .get(deployment_id)
                    .is_some_and(|d| d.offset >= offset)
                {
                    // Restored from the cluster's bucket, newer already.
                    return 0;
                }
                match registry.create(
                    Some(deployment_id.to_owned()),
                    application.to_owned(),
                    hosts.to_vec(),
                    message.map(str::to_owned),
                    now,
                ) {
                    Ok(_) => {
                        registry.stamp(deployment_id, offset);
                        0
                    }
                    Err(_) => 1,
                }
            }
            EntryRef::Updated {
                deployment_id,
                status,
                progress,
                message,
            } => {
                let update = Update {
                    status,
                    progress,
                    message: message.map(str::to_owned),
                };
                let changed = {
                    let mut registry = self.lock_deployments();
                    if registry
                        .get(deployment_id)
                        .is_some_and(|d| d.offset >= offset)
                    {
                        // A newer state was restored from the cluster.
                        return 0;
                    }
                    let changed = registry.update(deployment_id, update, None, now);
                    if changed.is_ok() {
                        registry.stamp(deployment_id, offset);
                    }
                    changed
                };
                match changed {
                    Ok(mut changed) => {
                        changed.deployment.offset = offset;
                        self.announce(index, &changed);
                        0
                    }
                    Err(_) => 1,
                }
            }
        }
    }

    /// Creates a deployment (REST) and records it in the history log.
    pub fn create_deployment(
        &self,
        id: Option<String>,
        application: String,
        hosts: Vec<String>,
        message: Option<String>,
        now: Timestamp,
    ) -> Result<Deployment, DeploymentError> {
        let mut order = self.order.lock();
        let offset = *order;
        let mut registry = self.lock_deployments();
        let mut deployment = registry.create(id, application, hosts, message.clone(), now)?;
        if let Some(store) = &self.store {
            let entry = EntryRef::Created {
                deployment_id: &deployment.deployment_id,
                application: &deployment.application,
                hosts: &deployment.hosts,
                message: message.as_deref(),
            };
            if let Err(error) = store.append(now.unix_millis, entry) {
                registry.remove(&deployment.deployment_id);
                return Err(DeploymentError::Storage(error.to_string()));
            }
        }
        *order += 1;
        registry.stamp(&deployment.deployment_id, offset);
        deployment.offset = offset;
        Ok(deployment)
    }

    fn route_log(
        &self,
        index: &Index,
        host: &str,
        record: &LogRecord,
        writer: &Scope,
        offset: u64,
        (ingested_at, alone): (Instant, bool),
    ) -> Result<(), DeploymentError> {
        // Deliveries written to their sockets at once, in this pass.
        let mut direct = 0u64;
        // An agent or a REST publisher may send any length: cut here.
        let cut;
        let record = if record.message.len() > self.limits.max_line_bytes {
            cut = LogRecord {
                message: o1_common::text::cut(record.message.clone(), self.limits.max_line_bytes),
                ..record.clone()
            };
            &cut
        } else {
            record
        };
        let timestamp = Timestamp::from_unix_millis(record.timestamp_ms);
        let message = LogMessage {
            subscription_id: None,
            deployment_id: record.deployment_id.clone(),
            host: host.to_owned(),
            application: record.application.clone(),
            level: record.level,
            message: record.message.clone(),
            timestamp,
            offset: Some(offset),
        };
        let body = serialize(&ServerMessage::Log(message));
        let live = Live {
            body: &body,
            ingested_at,
            alone,
        };
        let mut refused = Ok(());
        if let Some(deployment_id) = &record.deployment_id {
            let log = DeploymentLog {
                host: host.to_owned(),
                level: record.level,
                message: record.message.clone(),
                timestamp,
                offset,
                body: body.clone(),
            };
            let added = {
                let mut registry = self.lock_deployments();
                match registry.get(deployment_id) {
                    Some(d) if !writer.covers(&d.hosts) => {
                        refused = Err(DeploymentError::Forbidden(deployment_id.clone()));
                        false
                    }
                    _ => registry.add_log(deployment_id, log).is_ok(),
                }
            };
            if added {
                for subscription in index
                    .deployments
                    .get(deployment_id)
                    .into_iter()
                    .flatten()
                    .filter(|s| visible(&s.scope, host))
                {
                    if subscription.outbound.push_live(subscription.id, live) {
                        direct += 1;
                    }
                }
            }
        }
        let sequence = {
            let mut history = self.lock_history();
            let sequence = offset;
            history.next_sequence = offset + 1;
            let source = history.source(host, &record.application);
            source.line_bytes += body.len();
            source.lines.push_back(Arc::new(HistoryLine {
                sequence,
                level: record.level,
                message: record.message.clone(),
                body: body.clone(),
            }));
            while source.lines.len() > self.limits.lines_per_source
                || (source.line_bytes > self.limits.bytes_per_source && source.lines.len() > 1)
            {
                if let Some(old) = source.lines.pop_front() {
                    source.line_bytes -= old.body.len();
                }
            }
            sequence
        };
        // Lower-cased once per line, for every subscription that searches.
        let lowered = std::sync::OnceLock::new();
        let deliver = |list: &[LogSubscription]| {
            let mut written = 0u64;
            each_fetching_ahead(list, &mut |subscription| {
                if !visible(&subscription.scope, host) {
                    return;
                }
                let filter = &subscription.filter;
                let matches = if filter.searches() {
                    let lowered = lowered.get_or_init(|| lower(&record.message));
                    filter.content_matches_lowered(record.level, lowered)
                } else {
                    filter.content_matches(record.level, "")
                };
                if matches && subscription.deliver(sequence, live) {
                    written += 1;
                }
            });
            written
        };
        // Only a line that may be written at once is worth more threads:
        // queuing costs a fraction of a write.
        let threads = if alone { self.fanout_threads() } else { 1 };
        direct += fan_out(
            index.logs.candidate_lists(host, &record.application),
            threads,
            deliver,
        );
        // Lines written at once: their latency, once for the pass (the
        // writer records the queued ones as it writes them).
        if direct > 0 {
            self.stats
                .record_direct(ingested_at.elapsed().as_micros() as u64, direct);
        }
        refused
    }

    fn route_metric(&self, index: &Index, host: &str, sample: &MetricSample, ingested_at: Instant) {
        let full = metrics_message(host, sample);
        let (host_name, application) = {
            let mut history = self.lock_history();
            let source = history.source(host, &sample.application);
            source.latest_metric = Some(full.clone());
            let step = o1_common::api::HISTORY_STEP_SECS * 1000;
            let due = source
                .metric_history
                .back()
                .is_none_or(|last| full.timestamp.unix_millis >= last.timestamp.unix_millis + step);
            if due {
                source.metric_history.push_back(full.clone());
                let keep = (o1_common::api::MAX_HISTORY_SECS as i64 * 1000 / step) as usize;
                while source.metric_history.len() > keep {
                    source.metric_history.pop_front();
                }
            }
            (source.host.clone(), source.application.clone())
        };
        let mut by_selection: [Option<Bytes>; MetricSelection::COUNT] = Default::default();
        index
            .metrics
            .for_each_candidate(host, &sample.application, |subscription| {
                if !visible(&subscription.scope, host) {
                    return;
                }
                let selection = subscription.filter.selection;
                let body = by_selection[selection.index()]
                    .get_or_insert_with(|| {
                        serialize(&ServerMessage::Metrics(select_metrics(&full, selection)))
                    })
                    .clone();
                subscription.outbound.push_metric(
                    SeriesKey {
                        subscription: subscription.id,
                        host: host_name.clone(),
                        application: application.clone(),
                    },
                    Outgoing {
                        subscription: subscription.id,
                        body,
                        ingested_at: Some(ingested_at),
                    },
                );
            });
    }

    fn route_deployment_event(
        &self,
        index: &Index,
        host: &str,
        event: &DeploymentEvent,
        writer: &Scope,
        offset: u64,
        now: Timestamp,
    ) -> Result<(), DeploymentError> {
        let update = Update {
            status: Some(event.status),
            progress: event.progress.map(i64::from),
            message: Some(event.message.clone()),
        };
        let changed = {
            let mut registry = self.lock_deployments();
            if let Some(deployment) = registry.get(&event.deployment_id) {
                if !writer.covers(&deployment.hosts) {
                    return Err(DeploymentError::Forbidden(event.deployment_id.clone()));
                }
                if deployment.offset >= offset {
                    // A newer state was restored from the cluster.
                    return Ok(());
                }
            }
            let mut changed = registry.update(
                &event.deployment_id,
                update,
                Some((&event.application, host)),
                now,
            )?;
            registry.stamp(&event.deployment_id, offset);
            changed.deployment.offset = offset;
            changed
        };
        self.announce(index, &changed);
        Ok(())
    }

    /// Applies a deployment update from REST, records it in the history
    /// log, and tells its subscribers.
    pub fn update_deployment(
        &self,
        id: &str,
        update: Update,
        now: Timestamp,
    ) -> Result<Deployment, DeploymentError> {
        let mut order = self.order.lock();
        let offset = *order;
        let index = self.read_index();
        let mut changed = {
            let mut registry = self.lock_deployments();
            let changed = registry.update(id, update.clone(), None, now)?;
            registry.stamp(id, offset);
            changed
        };
        if let Some(store) = &self.store {
            let entry = EntryRef::Updated {
                deployment_id: id,
                status: update.status,
                progress: update.progress,
                message: update.message.as_deref(),
            };
            // Applied in memory already: a log that cannot take it is a
            // failing disk; say so, the change stands until a restart.
            if let Err(error) = store.append(now.unix_millis, entry) {
                tracing::error!(%error, deployment = %id, "history log append failed");
                return Err(DeploymentError::Storage(error.to_string()));
            }
        }
        *order += 1;
        changed.deployment.offset = offset;
        self.announce(&index, &changed);
        Ok(changed.deployment)
    }

    /// Publishes log lines of a deployment given over REST.
    pub fn deployment_logs(
        &self,
        id: &str,
        host: &str,
        lines: &[(Level, String)],
        now: Timestamp,
    ) -> Result<(), DeploymentError> {
        let items = self.deployment_items(id, lines, now)?;
        self.publish(host, &items, Instant::now(), now);
        Ok(())
    }

    /// REST deployment lines as items of the deployment's application.
    pub(crate) fn deployment_items(
        &self,
        id: &str,
        lines: &[(Level, String)],
        now: Timestamp,
    ) -> Result<Vec<Item>, DeploymentError> {
        let application = {
            let registry = self.lock_deployments();
            let deployment = registry.get(id).ok_or(DeploymentError::NotFound)?;
            if deployment.status.is_final() {
                return Err(DeploymentError::AlreadyEnded(deployment.status));
            }
            deployment.application.clone()
        };
        Ok(lines
            .iter()
            .map(|(level, message)| {
                Item::Log(LogRecord {
                    application: application.clone(),
                    timestamp_ms: now.unix_millis,
                    level: *level,
                    message: message.clone(),
                    deployment_id: Some(id.to_owned()),
                })
            })
            .collect())
    }

    fn announce(&self, index: &Index, changed: &Changed) {
        let Some(subscriptions) = index.deployments.get(&changed.deployment.deployment_id) else {
            return;
        };
        let progress = serialize(&deployment_message(&changed.deployment));
        let status = changed
            .ended
            .then(|| serialize(&status_message(&changed.deployment)));
        for subscription in subscriptions {
            if let Some(scope) = &subscription.scope
                && !scope.covers(&changed.deployment.hosts)
            {
                continue;
            }
            for body in std::iter::once(&progress).chain(status.as_ref()) {
                subscription.outbound.push_reply(Outgoing {
                    subscription: subscription.id,
                    body: body.clone(),
                    ingested_at: None,
                });
            }
        }
    }
}

/// Puts a log subscription in the index (its write lock held).
fn insert_logs(
    index: &mut Index,
    id: u64,
    filter: &LogFilter,
    scope: Visible,
    outbound: &Arc<Outbound>,
    gate: Option<Arc<ReplayGate>>,
) -> SubscriptionHandle {
    index.logs.insert(
        filter.host.clone().as_ref(),
        filter.application.clone().as_ref(),
        LogSubscription {
            id,
            filter: filter.clone(),
            scope,
            outbound: outbound.clone(),
            direct: outbound.direct().cloned(),
            gate,
        },
    );
    SubscriptionHandle {
        id,
        kind: HandleKind::Logs(filter.host.clone(), filter.application.clone()),
    }
}

fn deployment_message(deployment: &Deployment) -> ServerMessage {
    ServerMessage::Deployment(DeploymentMessage {
        subscription_id: None,
        deployment_id: deployment.deployment_id.clone(),
        status: deployment.status,
        message: deployment.message.clone(),
        timestamp: deployment.updated_at,
        progress: deployment.progress,
        offset: Some(deployment.offset),
    })
}

fn status_message(deployment: &Deployment) -> ServerMessage {
    let message = match deployment.status {
        DeploymentStatus::Completed if deployment.message.is_empty() => {
            "Deployment completed successfully".into()
        }
        _ => deployment.message.clone(),
    };
    ServerMessage::Status(StatusMessage {
        subscription_id: None,
        deployment_id: Some(deployment.deployment_id.clone()),
        status: deployment.status,
        message,
        timestamp: deployment.ended_at.unwrap_or(deployment.updated_at),
        offset: Some(deployment.offset),
    })
}

fn finite(value: f64) -> f64 {
    if value.is_finite() {
        (value * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn metrics_message(host: &str, sample: &MetricSample) -> MetricsMessage {
    MetricsMessage {
        subscription_id: None,
        host: host.to_owned(),
        application: sample.application.clone(),
        cpu: Some(finite(sample.cpu_percent)),
        memory: Some(finite(sample.memory_percent)),
        disk: sample.disk_percent.map(finite),
        network: sample.network.map(|(rx, tx)| NetworkRates {
            rx_bytes_per_second: finite(rx),
            tx_bytes_per_second: finite(tx),
        }),
        memory_bytes: Some(sample.memory_bytes),
        disk_bytes: sample.disk_bytes,
        up: Some(sample.up),
        timestamp: Timestamp::from_unix_millis(sample.timestamp_ms),
    }
}

/// The fields a subscription selected: `memoryBytes` goes with `memory`,
/// `diskBytes` with `disk`; `up` and the identity fields always.
pub fn select_metrics(full: &MetricsMessage, selection: MetricSelection) -> MetricsMessage {
    let keep = |name| selection.contains(name);
    MetricsMessage {
        subscription_id: None,
        host: full.host.clone(),
        application: full.application.clone(),
        cpu: full.cpu.filter(|_| keep(MetricName::Cpu)),
        memory: full.memory.filter(|_| keep(MetricName::Memory)),
        memory_bytes: full.memory_bytes.filter(|_| keep(MetricName::Memory)),
        disk: full.disk.filter(|_| keep(MetricName::Disk)),
        disk_bytes: full.disk_bytes.filter(|_| keep(MetricName::Disk)),
        network: full.network.filter(|_| keep(MetricName::Network)),
        up: full.up,
        timestamp: full.timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_fan_out_is_split_across_threads_and_reaches_everyone_once() {
        use std::sync::atomic::AtomicU32;
        let counts: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
        let threads = Mutex::new(std::collections::HashSet::new());
        let deliver = |part: &[AtomicU32]| {
            threads
                .lock()
                .insert(std::thread::current().name().map(str::to_owned));
            for count in part {
                count.fetch_add(1, Ordering::Relaxed);
            }
            part.len() as u64
        };
        // Four lists, as a source's candidates: 1,000 subscribers in all.
        let (a, rest) = counts.split_at(10);
        let (b, rest) = rest.split_at(600);
        let (c, d) = rest.split_at(3);
        assert_eq!(fan_out([a, b, c, d], 2, deliver), 1000);
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        let names = threads.lock().clone();
        assert!(names.contains(&Some("o1-fanout".to_owned())), "{names:?}");
        assert_eq!(names.len(), 2, "the caller and one helper: {names:?}");

        // Few subscribers: one thread, the caller's.
        threads.lock().clear();
        assert_eq!(fan_out([&counts[..300], &[], &[], &[]], 2, deliver), 300);
        assert!(!threads.lock().contains(&Some("o1-fanout".to_owned())));
        assert!(counts[..300].iter().all(|c| c.load(Ordering::Relaxed) == 2));
        assert!(counts[300..].iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    fn line(sequence: u64, level: Level) -> Arc<HistoryLine> {
        Arc::new(HistoryLine {
            sequence,
            level,
            message: format!("line {sequence}"),
            body: Bytes::new(),
        })
    }

    #[test]
    fn a_filtered_tail_scans_newest_first_across_sources_in_slices() {
        let hub = Hub::new(
            Arc::new(Stats::new()),
            HistoryLimits::default(),
            RegistryLimits::default(),
        );
        let now = Timestamp::now();
        // 3,000 lines over two applications, every 7th an ERROR.
        for n in 0..3000u64 {
            let item = Item::Log(LogRecord {
                application: format!("app-{}", n % 2),
                timestamp_ms: 0,
                level: if n % 7 == 0 {
                    Level::Error
                } else {
                    Level::Info
                },
                message: format!("line {n} {}", if n % 7 == 0 { "Disk FULL" } else { "ok" }),
                deployment_id: None,
            });
            hub.publish("h", &[item], Instant::now(), now);
        }
        let outbound = Arc::new(Outbound::new(Default::default(), hub.stats.clone()));
        let request = SubscribeLogs {
            tail: Some(5),
            search: Some("disk full".into()),
            ..SubscribeLogs::default()
        };
        hub.subscribe_logs(
            &request,
            None,
            &outbound,
            |_| Outgoing::reply(Bytes::from_static(b"{}")),
            100,
        );
        let drained = futures_util::FutureExt::now_or_never(outbound.next()).unwrap();
        let texts: Vec<String> = drained
            .messages
            .iter()
            .skip(1)
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        // The newest five multiples of 7 below 3,000, oldest first: the
        // sources kept 1,000 lines each (lines 1,000 to 2,999).
        let expected = [2961, 2968, 2975, 2982, 2989, 2996];
        assert_eq!(texts.len(), 5, "{texts:?}");
        for (text, n) in texts.iter().zip(&expected[1..]) {
            assert!(text.contains(&format!("line {n} ")), "{text} vs {n}");
        }
    }

    #[test]
    fn names_are_shared_and_unused_ones_swept() {
        let mut names = Names::default();
        let a = names.intern(Arc::from("web-01"));
        let b = names.intern(Arc::from("web-01"));
        assert!(Arc::ptr_eq(&a, &b), "one copy for every subscription");
        drop((a, b));
        for i in 0..2000 {
            names.intern(Arc::from(format!("gone-{i}").as_str()));
        }
        assert!(
            names.names.len() < 2000,
            "names no one holds are swept: {}",
            names.names.len()
        );
    }

    #[test]
    fn the_scan_merges_sources_from_their_ends_and_stops_after_n() {
        let hub = Hub::new(
            Arc::new(Stats::new()),
            HistoryLimits::default(),
            RegistryLimits::default(),
        );
        {
            let mut history = hub.lock_history();
            for (app, sequences, level) in [
                ("a", [1, 4, 5, 9], Level::Info),
                ("b", [2, 3, 7, 8], Level::Error),
            ] {
                let source = history.source("h", app);
                source.lines.extend(sequences.map(|s| line(s, level)));
            }
            history.source("h", "empty");
        }
        let keys: Vec<(String, String)> = ["a", "b", "empty", "gone"]
            .map(|app| ("h".to_owned(), app.to_owned()))
            .into();
        let table: &[(usize, u64, Option<Level>, Vec<u64>)] = &[
            (3, 10, None, vec![9, 8, 7]),
            (0, 10, None, vec![]),
            (100, 10, None, vec![9, 8, 7, 5, 4, 3, 2, 1]),
            (3, 10, Some(Level::Error), vec![8, 7, 3]),
            // Lines from the cut on are left to the gate.
            (3, 8, None, vec![7, 5, 4]),
        ];
        for (n, cut, min, expected) in table {
            let picked = hub.scan_newest(&keys, *cut, *n, |l| min.is_none_or(|m| l.level >= m));
            let sequences: Vec<u64> = picked.iter().map(|l| l.sequence).collect();
            assert_eq!(&sequences, expected, "n={n} cut={cut} min={min:?}");
        }
    }

    #[test]
    fn a_tail_replay_then_live_lines_once_each_in_order() {
        let hub = Hub::new(
            Arc::new(Stats::new()),
            HistoryLimits::default(),
            RegistryLimits::default(),
        );
        let record = |n: u64| {
            Item::Log(LogRecord {
                application: "app".into(),
                timestamp_ms: 0,
                level: Level::Info,
                message: format!("line {n}"),
                deployment_id: None,
            })
        };
        let now = Timestamp::now();
        hub.publish(
            "h",
            &(0..10).map(record).collect::<Vec<_>>(),
            Instant::now(),
            now,
        );
        let outbound = Arc::new(Outbound::new(Default::default(), hub.stats.clone()));
        let request = SubscribeLogs {
            tail: Some(4),
            ..SubscribeLogs::default()
        };
        let handle = hub.subscribe_logs(
            &request,
            None,
            &outbound,
            |_| Outgoing::reply(Bytes::from_static(b"{}")),
            3,
        );
        // Replayed and open: the entry no longer holds the gate, so live
        // lines reach the queue without it.
        let mut gated = None;
        hub.write_index()
            .logs
            .for_each_mut(None, None, handle.id, |s| gated = Some(s.gate.is_some()));
        assert_eq!(gated, Some(false), "the open gate left the index");
        hub.publish("h", &[record(10)], Instant::now(), now);
        let drained = futures_util::FutureExt::now_or_never(outbound.next()).unwrap();
        let texts: Vec<String> = drained
            .messages
            .iter()
            .skip(1)
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        assert_eq!(
            texts.len(),
            4,
            "3 replayed (the allowance) and 1 live: {texts:?}"
        );
        for (text, n) in texts.iter().zip([7, 8, 9, 10]) {
            assert!(text.contains(&format!("\"line {n}\"")), "{text}");
        }
        assert_eq!(
            drained.dropped,
            vec![(handle.id, 1)],
            "the tail beyond the allowance is announced"
        );
    }
}
