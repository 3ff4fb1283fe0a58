//! From producers to the relay: the batcher thread groups items into
//! batches and writes them to the spool; the sender task ships spooled
//! batches over QUIC with several in flight and applies acks; the
//! checkpointer writes the acknowledged file positions and then lets the
//! spool delete what they cover.
//!
//! Backpressure: the event queue between producers and the batcher is
//! bounded ([`EVENT_QUEUE`]). The tailer blocks when it is full (log lines
//! are never dropped here; the files themselves are the buffer); metric
//! samples are dropped and counted instead (the next sample replaces them).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use o1_common::wire::Item;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::checkpoint::{self, Checkpoint, FileKey, FileOffset, Positions};
use crate::config::BatchConfig;
use crate::spool::Spool;
use crate::uplink::{self, UplinkError, UplinkSettings};

/// Events the batcher's queue holds at most (each may carry many lines).
pub const EVENT_QUEUE: usize = 256;

/// What producers send to the batcher.
#[derive(Debug)]
pub enum Event {
    /// Lines read from one file, and the position after the last of them.
    Lines {
        items: Vec<Item>,
        key: FileKey,
        position: Position,
    },
    /// The path and application of a file, for the checkpoint.
    FilePath {
        key: FileKey,
        path: String,
        application: String,
    },
    /// The tailer let the file go: its checkpoint entry leaves once the
    /// batches before this are acknowledged.
    Released { key: FileKey },
    /// Journal entries of one application, and the cursor after them.
    Journal {
        items: Vec<Item>,
        application: String,
        cursor: String,
    },
    /// Metric samples or deployment events.
    Items(Vec<Item>),
    /// From the sender: every spooled batch is acknowledged, so what the
    /// batcher holds can go at once.
    UplinkIdle,
    /// From `run`, once every producer has stopped: flush and end.
    Stop,
}

/// A position in a file, with what proves it on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: u64,
    /// CRC32 of the `guard_len` bytes before `offset`.
    pub guard: u32,
    pub guard_len: u32,
    /// The file's length when it was read.
    pub size: u64,
}

/// Counters the agent keeps about itself.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub batches_spooled: AtomicU64,
    pub items_spooled: AtomicU64,
    pub batches_acked: AtomicU64,
    pub metric_samples_dropped: AtomicU64,
    pub connected: AtomicU64,
}

/// The batching policy, without I/O: events in, whole batches out. Like
/// Nagle's algorithm with a bound: a batch goes at once when the uplink is
/// idle (every spooled batch acknowledged), so a quiet host's line leaves
/// without waiting; while earlier batches are in flight it fills, and closes
/// at `max_items` items or `max_bytes` bytes of messages
/// ([`Batcher::full`]), when the uplink becomes idle, or when its first
/// item is `max_age` old ([`Batcher::deadline`]), so a busy host still
/// sends big batches. It carries the file positions, journal cursors
/// and releases its items reach, for the checkpoint.
#[derive(Debug, Default)]
pub struct Batcher {
    limits: BatchConfig,
    items: Vec<Item>,
    bytes: usize,
    opened_at: Option<Instant>,
    /// Keyed by inode: a file whose identity changed (copytruncate) keeps
    /// only its newest key and position.
    positions: HashMap<(u64, u64), (FileKey, Position)>,
    released: Vec<FileKey>,
    /// Journal cursors after the batch's entries, per application.
    journals: HashMap<String, String>,
    /// Path and application of every tracked file (forgotten on release).
    files: HashMap<FileKey, (String, String)>,
}

impl Batcher {
    pub fn new(limits: BatchConfig) -> Self {
        Batcher {
            limits,
            ..Batcher::default()
        }
    }

    /// Whether the batch should close now, `uplink_idle` being whether
    /// every spooled batch is acknowledged.
    pub fn should_flush(&self, uplink_idle: bool) -> bool {
        self.full() || (uplink_idle && !self.is_empty())
    }

    /// The batch must close now: at its item or byte limit.
    pub fn full(&self) -> bool {
        self.items.len() >= self.limits.max_items || self.bytes >= self.limits.max_bytes
    }

    /// When the open batch must close at the latest (`None`: none open).
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at
            .map(|at| at + Duration::from_millis(self.limits.max_age_ms))
    }

    pub fn add(&mut self, event: Event, now: Instant) {
        match event {
            Event::Lines {
                items,
                key,
                position,
            } => {
                self.bytes += items.iter().map(item_size).sum::<usize>();
                self.items.extend(items);
                let held = self
                    .positions
                    .entry((key.device, key.inode))
                    .or_insert((key, position));
                if held.0 != key || position.offset >= held.1.offset {
                    *held = (key, position);
                }
            }
            Event::FilePath {
                key,
                path,
                application,
            } => {
                self.files.insert(key, (path, application));
                return;
            }
            Event::Released { key } => self.released.push(key),
            Event::Journal {
                items,
                application,
                cursor,
            } => {
                self.bytes += items.iter().map(item_size).sum::<usize>();
                self.items.extend(items);
                self.journals.insert(application, cursor);
            }
            Event::Items(more) => {
                self.bytes += more.iter().map(item_size).sum::<usize>();
                self.items.extend(more);
            }
            Event::UplinkIdle | Event::Stop => return,
        }
        self.opened_at.get_or_insert(now);
    }

    /// The batch's items and the positions they reach (releases last),
    /// leaving the batcher empty; `None` when there is nothing to send.
    pub fn take(&mut self) -> Option<(Vec<Item>, Positions)> {
        if self.is_empty() {
            return None;
        }
        let mut offsets: Vec<FileOffset> = self
            .positions
            .drain()
            .map(|(_, (key, position))| {
                let (path, application) = self.files.get(&key).cloned().unwrap_or_default();
                FileOffset {
                    key,
                    offset: position.offset,
                    path,
                    application,
                    guard: position.guard,
                    guard_len: position.guard_len,
                    size: position.size,
                    released: false,
                }
            })
            .collect();
        for key in self.released.drain(..) {
            self.files.remove(&key);
            offsets.push(FileOffset::release(key));
        }
        self.bytes = 0;
        self.opened_at = None;
        let positions = Positions {
            files: offsets,
            journals: self.journals.drain().collect(),
        };
        Some((std::mem::take(&mut self.items), positions))
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.released.is_empty()
    }
}

/// Runs until [`Event::Stop`] (or every sender of `events` is gone);
/// flushes what it holds.
pub fn run_batcher(
    events: Receiver<Event>,
    spool: Arc<Mutex<Spool>>,
    spooled: Arc<Notify>,
    appended: SyncSender<()>,
    limits: BatchConfig,
    stats: Arc<AgentStats>,
) {
    let mut batcher = Batcher::new(limits);
    let flush = |batcher: &mut Batcher| {
        let Some((batch, positions)) = batcher.take() else {
            return;
        };
        let count = batch.len() as u64;
        let result = spool.lock().append_batch(batch, positions);
        match result {
            Ok(_) => {
                stats.batches_spooled.fetch_add(1, Ordering::Relaxed);
                stats.items_spooled.fetch_add(count, Ordering::Relaxed);
                spooled.notify_one();
                // Full: a sync is pending already and covers this batch.
                let _ = appended.try_send(());
            }
            Err(error) => tracing::error!(%error, lost_items = count, "cannot write to the spool"),
        }
    };
    loop {
        let timeout = match batcher.deadline() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        match events.recv_timeout(timeout) {
            Ok(Event::Stop) => {
                flush(&mut batcher);
                return;
            }
            Ok(Event::UplinkIdle) => flush(&mut batcher),
            Ok(event) => {
                batcher.add(event, Instant::now());
                let idle = spool.lock().unacked_batches() == 0;
                if batcher.should_flush(idle) {
                    flush(&mut batcher);
                }
            }
            Err(RecvTimeoutError::Timeout) => flush(&mut batcher),
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut batcher);
                return;
            }
        }
    }
}

/// Syncs the spool to disk `fsync_interval` after a batch was appended
/// (`appended`), on this thread and without holding the spool: the
/// batcher and the sender go on while the disk catches up. Blocks while
/// nothing is appended (no wake-ups when idle); ends when the batcher has
/// (its sender dropped), the last sync being the agent's at stop.
pub fn run_spool_sync(spool: Arc<Mutex<Spool>>, appended: Receiver<()>) {
    while appended.recv().is_ok() {
        let due_in = spool.lock().sync_due_in();
        let Some(due_in) = due_in else {
            continue;
        };
        std::thread::sleep(due_in);
        let file = spool.lock().take_sync();
        match file {
            Ok(Some(file)) => {
                if let Err(error) = file.sync_data() {
                    tracing::error!(%error, "cannot fsync the spool");
                    spool.lock().sync_failed();
                }
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "cannot fsync the spool"),
        }
    }
}

fn item_size(item: &Item) -> usize {
    match item {
        Item::Log(log) => log.message.len() + log.application.len() + 24,
        Item::Metric(_) => 96,
        Item::Deployment(event) => event.message.len() + 64,
    }
}

/// Acknowledged positions, and whether the checkpoint file lags them.
#[derive(Debug)]
pub struct CheckpointState {
    pub checkpoint: Checkpoint,
    /// The acknowledged sequence moved (metrics-only acks): written lazily,
    /// every [`LAZY_CHECKPOINT`] — a stale sequence only makes the relay
    /// drop a few resent duplicates after a restart.
    pub dirty: bool,
    /// File positions moved: written within [`crate::CHECKPOINT_INTERVAL`].
    pub offsets_dirty: bool,
    pub written_at: Instant,
}

impl CheckpointState {
    pub fn new(checkpoint: Checkpoint) -> Self {
        CheckpointState {
            checkpoint,
            dirty: false,
            offsets_dirty: false,
            written_at: Instant::now(),
        }
    }
}

/// Longest a moved acknowledged sequence waits to be written.
pub const LAZY_CHECKPOINT: Duration = Duration::from_secs(30);

/// What the sender needs: where to send, what, and where acks go.
#[derive(Debug)]
pub struct Sender {
    pub settings: UplinkSettings,
    pub spool: Arc<Mutex<Spool>>,
    pub spooled: Arc<Notify>,
    pub acked: Arc<Mutex<CheckpointState>>,
    /// Woken when an ack moved file positions.
    pub acked_notify: Arc<Notify>,
    pub max_in_flight: usize,
    /// First and longest reconnect delay.
    pub backoff: (Duration, Duration),
    pub stats: Arc<AgentStats>,
    /// Told [`Event::UplinkIdle`] when the last spooled batch is acked.
    pub batcher: SyncSender<Event>,
}

/// Ships spooled batches until `shutdown`; reconnects with exponential
/// backoff and full jitter.
pub async fn run_sender(sender: Sender, shutdown: CancellationToken) {
    let Sender {
        settings,
        spool,
        spooled,
        acked,
        acked_notify,
        max_in_flight,
        backoff,
        stats,
        batcher,
    } = sender;
    let endpoint = match uplink::endpoint(&settings) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::error!(%error, "cannot set up the uplink; nothing will be sent");
            shutdown.cancelled().await;
            return;
        }
    };
    let mut backoff = Backoff::new(backoff.0, backoff.1);
    let mut last_error = String::new();
    // Which relay to try next, and how many tried since the last session:
    // after a loss the next relay is tried at once; the backoff waits only
    // once every relay failed in a row.
    let relays = settings.addresses.len().max(1);
    let mut current = 0usize;
    let mut failed_in_row = 0usize;
    while !shutdown.is_cancelled() {
        let relay = settings.addresses[current % relays].clone();
        let session = tokio::select! {
            _ = shutdown.cancelled() => break,
            session = uplink::connect(&endpoint, &settings, &relay) => session,
        };
        current = (current + 1) % relays;
        match session {
            Ok(session) => {
                // Stay with this relay while it works.
                current = (current + relays - 1) % relays;
                failed_in_row = 0;
                tracing::info!(%relay, "connected to the relay");
                last_error.clear();
                backoff.reset();
                stats.connected.store(1, Ordering::Relaxed);
                let end = ship(
                    session,
                    &spool,
                    &spooled,
                    (&acked, &acked_notify),
                    (max_in_flight, settings.ack_timeout, &batcher),
                    &stats,
                    &shutdown,
                )
                .await;
                stats.connected.store(0, Ordering::Relaxed);
                match end {
                    Ok(()) => break,
                    Err(error) if relays > 1 => {
                        current = (current + 1) % relays;
                        tracing::warn!(%error, %relay, next = %settings.addresses[current], "uplink session ended; moving to the next relay");
                        continue;
                    }
                    Err(error) => tracing::warn!(%error, "uplink session ended; reconnecting"),
                }
            }
            Err(error) => {
                let text = error.to_string();
                if text != last_error {
                    match &error {
                        UplinkError::Refused(_) | UplinkError::Tls(_) => {
                            tracing::error!(%error, "cannot deliver to the relay")
                        }
                        _ => {
                            tracing::warn!(%error, retry_in_ms = backoff.current().as_millis() as u64, "relay unreachable; spooling")
                        }
                    }
                    last_error = text;
                }
                if matches!(error, UplinkError::Refused(_)) {
                    backoff.to_longest();
                }
                failed_in_row += 1;
                if failed_in_row < relays {
                    continue;
                }
                failed_in_row = 0;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.wait()) => {}
        }
    }
    endpoint.close(0u32.into(), b"agent stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn ship(
    mut session: uplink::Session,
    spool: &Mutex<Spool>,
    spooled: &Notify,
    (acked, acked_notify): (&Mutex<CheckpointState>, &Notify),
    (max_in_flight, ack_timeout, batcher): (usize, Duration, &SyncSender<Event>),
    stats: &AgentStats,
    shutdown: &CancellationToken,
) -> Result<(), UplinkError> {
    let mut next = {
        let spool = spool.lock();
        spool.first_unacked().unwrap_or(spool.next_sequence())
    };
    let mut draining_since: Option<Instant> = None;
    // Since when batches are in flight with no ack (`None`: none are).
    let mut waiting_since: Option<Instant> = None;
    loop {
        // Fill the window.
        loop {
            let frame = {
                let spool = spool.lock();
                let in_flight = next.saturating_sub(spool.acked() + 1);
                if next >= spool.next_sequence() || in_flight >= max_in_flight as u64 {
                    None
                } else {
                    match spool.frame(next) {
                        Ok(Some(frame)) => Some(frame),
                        // Dropped from a full spool: continue at the oldest held.
                        Ok(None) => {
                            next = spool.first_unacked().unwrap_or(spool.next_sequence());
                            continue;
                        }
                        Err(e) => {
                            return Err(UplinkError::Protocol(format!(
                                "cannot read the spool: {e}"
                            )));
                        }
                    }
                }
            };
            let Some(frame) = frame else { break };
            session.send_frame(&frame).await?;
            waiting_since.get_or_insert_with(Instant::now);
            next += 1;
        }
        let ack_due = waiting_since.map(|since| since + ack_timeout);
        if let Some(since) = draining_since {
            let done = spool.lock().unacked_batches() == 0;
            if done || since.elapsed() > Duration::from_secs(2) {
                session.close().await;
                return Ok(());
            }
        }
        tokio::select! {
            ack = session.next_ack() => {
                let sequence = ack?;
                let (positions, idle) = {
                    let mut spool = spool.lock();
                    (spool.ack(sequence), spool.unacked_batches() == 0)
                };
                if idle {
                    // Whatever the batcher holds can go now. Full: it is
                    // busy and will flush anyway.
                    let _ = batcher.try_send(Event::UplinkIdle);
                }
                stats.batches_acked.fetch_add(1, Ordering::Relaxed);
                waiting_since = (next > sequence + 1).then(Instant::now);
                let mut state = acked.lock();
                state.checkpoint.acked_sequence = state.checkpoint.acked_sequence.max(sequence);
                state.dirty = true;
                if !positions.is_empty() {
                    state.checkpoint.apply(&positions);
                    state.offsets_dirty = true;
                    acked_notify.notify_one();
                }
            }
            _ = spooled.notified() => {}
            _ = shutdown.cancelled(), if draining_since.is_none() => {
                draining_since = Some(Instant::now());
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if draining_since.is_some() => {}
            _ = tokio::time::sleep_until(ack_due.unwrap_or_else(Instant::now).into()), if ack_due.is_some() => {
                return Err(UplinkError::Lost(format!(
                    "no ack for {} ms with batches in flight",
                    ack_timeout.as_millis()
                )));
            }
        }
    }
}

/// Writes the checkpoint when acks moved file positions (coalescing for
/// [`crate::CHECKPOINT_INTERVAL`]) or, lazily, the acknowledged sequence;
/// then lets the spool delete what the written checkpoint covers. Sleeps
/// between acks: no periodic wake-ups while nothing happens.
pub async fn run_checkpointer(
    path: std::path::PathBuf,
    spool: Arc<Mutex<Spool>>,
    acked: Arc<Mutex<CheckpointState>>,
    acked_notify: Arc<Notify>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                write_checkpoint(&path, &spool, &acked, true);
                return;
            }
            _ = acked_notify.notified() => {}
            _ = tokio::time::sleep(LAZY_CHECKPOINT) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        write_checkpoint(&path, &spool, &acked, false);
    }
}

/// Writes the checkpoint if positions moved, or if the sequence moved and
/// `force` or [`LAZY_CHECKPOINT`] passed.
pub fn write_checkpoint(
    path: &std::path::Path,
    spool: &Mutex<Spool>,
    acked: &Mutex<CheckpointState>,
    force: bool,
) {
    let snapshot = {
        let mut state = acked.lock();
        let due = state.offsets_dirty
            || (state.dirty && (force || state.written_at.elapsed() >= LAZY_CHECKPOINT));
        if !due {
            return;
        }
        state.dirty = false;
        state.offsets_dirty = false;
        state.written_at = Instant::now();
        state.checkpoint.clone()
    };
    match checkpoint::store(path, &snapshot) {
        Ok(()) => {
            if let Err(error) = spool.lock().release(snapshot.acked_sequence) {
                tracing::error!(%error, "cannot delete acknowledged spool segments");
            }
        }
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot write the checkpoint");
            let mut state = acked.lock();
            state.dirty = true;
            state.offsets_dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use o1_common::Level;
    use o1_common::wire::LogRecord;

    fn key(inode: u64, generation: u64) -> FileKey {
        crate::checkpoint::test_key(inode, generation)
    }

    fn lines(n: usize, inode: u64, generation: u64, offset: u64) -> Event {
        let items = (0..n)
            .map(|i| {
                Item::Log(LogRecord {
                    application: "app".into(),
                    timestamp_ms: 0,
                    level: Level::Info,
                    message: format!("line {i}"),
                    deployment_id: None,
                })
            })
            .collect();
        Event::Lines {
            items,
            key: key(inode, generation),
            position: Position {
                offset,
                ..Position::default()
            },
        }
    }

    #[test]
    fn batches_close_on_items_bytes_or_age() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let limits = BatchConfig {
            max_items: 10,
            max_bytes: 1_000,
            max_age_ms: 20,
        };
        // (events of n lines, full after?)
        let table: &[(&[usize], bool)] = &[
            (&[3], false),
            (&[3, 6], false),
            (&[3, 7], true),
            (&[12], true),
        ];
        for (sizes, full) in table {
            let mut batcher = Batcher::new(limits.clone());
            assert_eq!(batcher.deadline(), None);
            for (i, n) in sizes.iter().enumerate() {
                batcher.add(lines(*n, 1, 0, 10 * i as u64), start + ms(i as u64));
            }
            assert_eq!(batcher.full(), *full, "{sizes:?}");
            // The age counts from the first item.
            assert_eq!(batcher.deadline(), Some(start + ms(20)));
        }
        let mut batcher = Batcher::new(limits);
        let long = Event::Items(vec![Item::Log(LogRecord {
            application: "a".into(),
            timestamp_ms: 0,
            level: Level::Info,
            message: "x".repeat(2_000),
            deployment_id: None,
        })]);
        batcher.add(long, start);
        assert!(batcher.full(), "bytes");
        assert!(batcher.take().is_some());
        assert!(batcher.take().is_none());
        assert_eq!(batcher.deadline(), None);
    }

    #[test]
    fn an_idle_uplink_takes_a_line_at_once_a_busy_one_lets_the_batch_fill() {
        let now = Instant::now();
        let limits = BatchConfig {
            max_items: 10,
            max_bytes: 100_000,
            max_age_ms: 20,
        };
        // (lines in the batch, uplink idle) → close now?
        let table = [
            (0, true, false),
            (1, true, true),
            (1, false, false),
            (9, false, false),
            (10, false, true),
        ];
        for (n, idle, flush) in table {
            let mut batcher = Batcher::new(limits.clone());
            if n > 0 {
                batcher.add(lines(n, 1, 0, 1), now);
            }
            assert_eq!(batcher.should_flush(idle), flush, "{n} lines, idle {idle}");
        }
        // A release alone (no lines) is worth a batch too.
        let mut batcher = Batcher::new(limits);
        batcher.add(Event::Released { key: key(3, 0) }, now);
        assert!(batcher.should_flush(true));
    }

    #[test]
    fn a_batch_carries_the_furthest_position_per_file_and_releases_last() {
        let now = Instant::now();
        let mut batcher = Batcher::new(BatchConfig {
            max_items: 100,
            max_bytes: 100_000,
            max_age_ms: 20,
        });
        batcher.add(
            Event::FilePath {
                key: key(7, 0),
                path: "/var/log/a.log".into(),
                application: "app".into(),
            },
            now,
        );
        assert!(batcher.take().is_none(), "a path alone is no batch");
        batcher.add(lines(1, 7, 0, 100), now);
        batcher.add(lines(1, 7, 0, 50), now);
        batcher.add(lines(1, 8, 0, 10), now);
        // Same inode, new identity (copytruncate): the new key wins.
        batcher.add(lines(1, 8, 1, 5), now);
        batcher.add(Event::Released { key: key(9, 0) }, now);
        let (items, positions) = batcher.take().unwrap();
        assert_eq!(items.len(), 4);
        let mut files: Vec<(u64, u64, u64, bool)> = positions
            .files
            .iter()
            .map(|f| (f.key.inode, f.key.generation, f.offset, f.released))
            .collect();
        assert_eq!(files.pop(), Some((9, 0, 0, true)), "releases come last");
        files.sort_unstable();
        assert_eq!(files, [(7, 0, 100, false), (8, 1, 5, false)]);
        let a = positions.files.iter().find(|f| f.key.inode == 7).unwrap();
        assert_eq!(a.path, "/var/log/a.log");
    }
}
