//! The relay's history log on disk: every ingested batch and every REST
//! deployment change, appended before the batch is acknowledged, with a
//! relay-wide `offset` per item that only grows (across restarts too).
//!
//! ```text
//! <dir>/epoch                         random, made when the directory is new
//! <dir>/00000000000000001234.seg      records from offset 1234 on
//! record: [u32 length][u32 crc32 of payload][payload: postcard Record]
//! ```
//!
//! Segments roll at `segment_bytes`; the oldest go when the log exceeds
//! `max_bytes` or its records are older than `max_age` (never the one being
//! written, so the next offset is always known). Writes go to the page
//! cache at once (one `write` per record) and are synced every
//! `fsync_interval`, as the agent's spool does, without holding the lock
//! appends take (a roll syncs the finished segment first). On start a torn
//! or corrupt tail (a crash mid-write) is cut at the last whole record and
//! logged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use o1_common::api::DeploymentStatus;
use o1_common::wire::Item;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What happened, in the order the relay applied it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// An agent's batch (or REST deployment lines, with an empty agent id):
    /// its items take one offset each.
    Batch {
        host: String,
        agent_id: String,
        sequence: u64,
        items: Vec<Item>,
    },
    /// `POST /api/deployments`.
    Created {
        deployment_id: String,
        application: String,
        hosts: Vec<String>,
        message: Option<String>,
    },
    /// A REST change of a deployment (events, cancel).
    Updated {
        deployment_id: String,
        status: Option<DeploymentStatus>,
        progress: Option<i64>,
        message: Option<String>,
    },
}

impl Entry {
    /// How many offsets the entry takes.
    pub fn offsets(&self) -> u64 {
        match self {
            Entry::Batch { items, .. } => items.len() as u64,
            _ => 1,
        }
    }
}

/// [`Entry`], borrowed: what the hub appends without copying a batch.
/// Encoded exactly as `Entry` (same variants and fields, in order).
#[derive(Debug, Clone, Copy, Serialize)]
pub enum EntryRef<'a> {
    Batch {
        host: &'a str,
        agent_id: &'a str,
        sequence: u64,
        items: &'a [Item],
    },
    Created {
        deployment_id: &'a str,
        application: &'a str,
        hosts: &'a [String],
        message: Option<&'a str>,
    },
    Updated {
        deployment_id: &'a str,
        status: Option<DeploymentStatus>,
        progress: Option<i64>,
        message: Option<&'a str>,
    },
}

impl EntryRef<'_> {
    pub fn offsets(&self) -> u64 {
        match self {
            EntryRef::Batch { items, .. } => items.len() as u64,
            _ => 1,
        }
    }
}

impl Entry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        match self {
            Entry::Batch {
                host,
                agent_id,
                sequence,
                items,
            } => EntryRef::Batch {
                host,
                agent_id,
                sequence: *sequence,
                items,
            },
            Entry::Created {
                deployment_id,
                application,
                hosts,
                message,
            } => EntryRef::Created {
                deployment_id,
                application,
                hosts,
                message: message.as_deref(),
            },
            Entry::Updated {
                deployment_id,
                status,
                progress,
                message,
            } => EntryRef::Updated {
                deployment_id,
                status: *status,
                progress: *progress,
                message: message.as_deref(),
            },
        }
    }
}

#[derive(Serialize)]
struct RecordRef<'a> {
    offset: u64,
    at_ms: i64,
    entry: EntryRef<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The offset of the entry's first item.
    pub offset: u64,
    /// When the relay applied it, Unix milliseconds.
    pub at_ms: i64,
    pub entry: Entry,
}

impl Record {
    /// The offset after this record's last item.
    pub fn end(&self) -> u64 {
        self.offset + self.entry.offsets()
    }
}

/// `[history]` keys of the log.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub fsync_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a record: {0}")]
    Encode(#[from] postcard::Error),
    #[error("the segment holding offset {0} is gone (dropped for space or age)")]
    Gone(u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Largest record accepted when reading (a corrupt length is not
/// allocated).
const MAX_RECORD: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
struct Writer {
    file: File,
    segments: VecDeque<Segment>,
    dirty: bool,
}

/// The log. Appends are serialized by the caller (offsets are assigned in
/// routing order); reads use their own file handles and never block them.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    epoch: u64,
    writer: Mutex<Writer>,
    next_offset: AtomicU64,
    oldest_offset: AtomicU64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// Reads one record frame; `Ok(None)` at a clean end, `Err` on a torn or
/// corrupt frame.
fn read_frame(reader: &mut impl Read) -> Result<Option<(Record, u64)>, String> {
    let mut header = [0u8; 8];
    match reader.read(&mut header[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    reader
        .read_exact(&mut header[1..])
        .map_err(|_| "torn header".to_owned())?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if length > MAX_RECORD {
        return Err(format!("record length {length} is not believable"));
    }
    let mut payload = vec![0u8; length];
    reader
        .read_exact(&mut payload)
        .map_err(|_| "torn record".to_owned())?;
    if crc32fast::hash(&payload) != crc {
        return Err("checksum mismatch".into());
    }
    let record = postcard::from_bytes(&payload).map_err(|e| format!("undecodable: {e}"))?;
    Ok(Some((record, 8 + length as u64)))
}

fn encode(record: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    let payload = postcard::to_stdvec(record)?;
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// JavaScript-safe (below 2^53), never 0.
fn new_epoch() -> u64 {
    (rand::random::<u64>() & ((1 << 53) - 1)).max(1)
}

impl Store {
    /// Opens (or creates) the log in `config.dir` and hands every record
    /// it holds, oldest first, to `recover`.
    pub fn open(config: StoreConfig, mut recover: impl FnMut(Record)) -> Result<Store, StoreError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let epoch_path = dir.join("epoch");
        let epoch = match fs::read_to_string(&epoch_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            Some(epoch) => epoch,
            None => {
                let epoch = new_epoch();
                // A new epoch means earlier offsets mean nothing: start clean.
                for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                    if entry.path().extension().is_some_and(|e| e == "seg") {
                        let _ = fs::remove_file(entry.path());
                    }
                }
                let temporary = dir.join("epoch.tmp");
                fs::write(&temporary, epoch.to_string()).map_err(io(&temporary))?;
                fs::rename(&temporary, &epoch_path).map_err(io(&epoch_path))?;
                epoch
            }
        };
        let firsts = segment_firsts(&dir)?;
        let mut segments = VecDeque::new();
        let mut next_offset = 0u64;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = segment_path(&dir, first);
            let file = File::open(&path).map_err(io(&path))?;
            let mut reader = BufReader::new(file);
            let mut good = 0u64;
            loop {
                match read_frame(&mut reader) {
                    Ok(Some((record, size))) => {
                        good += size;
                        next_offset = next_offset.max(record.end());
                        recover(record);
                    }
                    Ok(None) => break,
                    Err(problem) => {
                        tracing::warn!(segment = %path.display(), at = good, %problem, "history log: cut at the last whole record");
                        if i + 1 == count {
                            let file = OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(io(&path))?;
                            file.set_len(good).map_err(io(&path))?;
                        }
                        break;
                    }
                }
            }
            segments.push_back(Segment {
                first,
                path,
                bytes: good,
            });
        }
        if segments.is_empty() {
            let path = segment_path(&dir, next_offset);
            segments.push_back(Segment {
                first: next_offset,
                path,
                bytes: 0,
            });
        }
        let current = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .map_err(io(&current))?;
        let oldest = segments.front().map_or(0, |s| s.first);
        Ok(Store {
            config,
            epoch,
            writer: Mutex::new(Writer {
                file,
                segments,
                dirty: false,
            }),
            next_offset: AtomicU64::new(next_offset),
            oldest_offset: AtomicU64::new(oldest),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The offset the next item gets; everything below it is on disk.
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// The first offset still held.
    pub fn oldest_offset(&self) -> u64 {
        self.oldest_offset.load(Ordering::Acquire)
    }

    /// Appends `entry` at the next offset; returns that offset. Callers
    /// serialize appends (the hub's publish order).
    pub fn append(&self, at_ms: i64, entry: EntryRef<'_>) -> Result<u64, StoreError> {
        let mut writer = self.writer.lock();
        let offset = self.next_offset.load(Ordering::Acquire);
        let end = offset + entry.offsets();
        let frame = encode(&RecordRef {
            offset,
            at_ms,
            entry,
        })?;
        let current = writer.segments.back().cloned();
        if let Some(segment) = current
            && segment.bytes > 0
            && segment.bytes + frame.len() as u64 > self.config.segment_bytes
        {
            self.roll(&mut writer, offset)?;
        }
        let path = writer
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        writer.file.write_all(&frame).map_err(io(&path))?;
        if let Some(segment) = writer.segments.back_mut() {
            segment.bytes += frame.len() as u64;
        }
        writer.dirty = true;
        self.next_offset.store(end, Ordering::Release);
        Ok(offset)
    }

    fn roll(&self, writer: &mut Writer, first: u64) -> Result<(), StoreError> {
        let _ = writer.file.sync_data();
        let path = segment_path(&self.config.dir, first);
        writer.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writer.segments.push_back(Segment {
            first,
            path,
            bytes: 0,
        });
        self.trim(writer);
        Ok(())
    }

    /// Drops the oldest segments beyond the bounds (never the current).
    fn trim(&self, writer: &mut Writer) {
        let now = SystemTime::now();
        loop {
            let total: u64 = writer.segments.iter().map(|s| s.bytes).sum();
            let Some(oldest) = writer.segments.front().cloned() else {
                break;
            };
            if writer.segments.len() < 2 {
                break;
            }
            // A segment's age is that of its last write.
            let too_old = fs::metadata(&oldest.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > self.config.max_age);
            if total <= self.config.max_bytes && !too_old {
                break;
            }
            let _ = fs::remove_file(&oldest.path);
            writer.segments.pop_front();
            if let Some(next) = writer.segments.front() {
                self.oldest_offset.store(next.first, Ordering::Release);
            }
            tracing::debug!(segment = %oldest.path.display(), "history log: oldest segment dropped");
        }
    }

    /// Syncs what was written since the last call, and drops segments past
    /// their age (the interval task calls this). The sync runs on a
    /// duplicate of the current segment's descriptor, outside the writer's
    /// lock: appends (which the hub makes under its publish order) go on
    /// while the disk catches up, where an `fdatasync` of a second of
    /// writes can take tens of milliseconds.
    pub fn sync(&self) {
        let file = {
            let mut writer = self.writer.lock();
            let file = if writer.dirty {
                match writer.file.try_clone() {
                    Ok(file) => {
                        writer.dirty = false;
                        Some(file)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "history log: cannot sync (no descriptor)");
                        None
                    }
                }
            } else {
                None
            };
            self.trim(&mut writer);
            file
        };
        if let Some(file) = file
            && let Err(error) = file.sync_data()
        {
            tracing::warn!(%error, "history log: fsync failed");
            self.writer.lock().dirty = true;
        }
    }

    pub fn fsync_interval(&self) -> Duration {
        self.config.fsync_interval
    }

    /// A reader positioned at the record holding `offset` (or the oldest
    /// held, if `offset` is older).
    pub fn reader(&self, offset: u64) -> Result<LogReader, StoreError> {
        Ok(LogReader {
            dir: self.config.dir.clone(),
            segment: None,
            file: None,
            position: 0,
            pending: None,
            from: offset,
        })
    }
}

/// Reads records in order from one offset on, across segments (also
/// those made after it was created), with its own file handles. It can be
/// called again and again as the log grows: a record past the end asked
/// for is kept for the next call, and a record still being written at the
/// end of the newest segment is read again next time.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// The first offset of the segment being read.
    segment: Option<u64>,
    file: Option<BufReader<File>>,
    /// Bytes of whole records read from the segment.
    position: u64,
    pending: Option<Record>,
    /// Records ending at or before this are skipped.
    from: u64,
}

/// The first offsets of the segments in `dir`, sorted.
fn segment_firsts(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut firsts: Vec<u64> = fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

impl LogReader {
    fn open(&mut self, first: u64) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, first);
        let file = File::open(&path).map_err(|_| StoreError::Gone(first))?;
        self.segment = Some(first);
        self.file = Some(BufReader::new(file));
        self.position = 0;
        Ok(())
    }

    /// Up to `max` records that end after the start offset and begin
    /// before `to`; empty when there are none (yet).
    pub fn next_chunk(&mut self, to: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        while out.len() < max {
            if let Some(record) = self.pending.take() {
                if record.offset >= to {
                    self.pending = Some(record);
                    break;
                }
                if record.end() > self.from {
                    out.push(record);
                }
                continue;
            }
            if self.file.is_none() {
                let firsts = segment_firsts(&self.dir)?;
                let first = firsts
                    .iter()
                    .rev()
                    .find(|f| **f <= self.from)
                    .or(firsts.first())
                    .copied();
                match first {
                    Some(first) => self.open(first)?,
                    None => break,
                }
            }
            let Some(file) = self.file.as_mut() else {
                break;
            };
            match read_frame(file) {
                Ok(Some((record, size))) => {
                    self.position += size;
                    self.pending = Some(record);
                }
                Ok(None) | Err(_) => {
                    // The end of this segment: on to a newer one if there
                    // is one (then this one is complete); else this is the
                    // newest, maybe with a record being written: read it
                    // again next time.
                    let current = self.segment.unwrap_or(0);
                    let next = segment_firsts(&self.dir)?
                        .into_iter()
                        .find(|f| *f > current);
                    match next {
                        Some(next) => self.open(next)?,
                        None => {
                            let position = self.position;
                            if let Some(file) = self.file.as_mut() {
                                let _ = file.seek(SeekFrom::Start(position));
                            }
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.writer.get_mut().file.sync_data();
    }
}

/// Reads every record of a log directory (for tests and tools).
pub fn read_all(dir: &Path) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    for first in segment_firsts(dir)? {
        let path = segment_path(dir, first);
        let mut reader = BufReader::new(File::open(&path).map_err(io(&path))?);
        while let Ok(Some((record, _))) = read_frame(&mut reader) {
            out.push(record);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use o1_common::Level;
    use o1_common::wire::LogRecord;

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig {
            dir: dir.to_owned(),
            segment_bytes: 4096,
            max_bytes: 64 * 1024,
            max_age: Duration::from_secs(3600),
            fsync_interval: Duration::from_secs(1),
        }
    }

    fn batch(n: usize, tag: &str) -> Entry {
        Entry::Batch {
            host: "h".into(),
            agent_id: "a".into(),
            sequence: 1,
            items: (0..n)
                .map(|i| {
                    Item::Log(LogRecord {
                        application: "app".into(),
                        timestamp_ms: 0,
                        level: Level::Info,
                        message: format!("{tag} {i} {}", "x".repeat(40)),
                        deployment_id: None,
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn offsets_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path()), |_| {}).unwrap();
        let epoch = store.epoch();
        assert_eq!(store.append(1, batch(3, "a").as_ref()).unwrap(), 0);
        assert_eq!(store.append(2, batch(2, "b").as_ref()).unwrap(), 3);
        assert_eq!(store.next_offset(), 5);
        drop(store);
        // A crash mid-write: half a frame at the end.
        let segment = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let mut recovered = Vec::new();
        let store = Store::open(config(dir.path()), |r| recovered.push(r.offset)).unwrap();
        assert_eq!(recovered, [0, 3]);
        assert_eq!(store.epoch(), epoch, "same directory, same epoch");
        assert_eq!(
            store.append(3, batch(1, "c").as_ref()).unwrap(),
            5,
            "offsets go on"
        );
        drop(store);
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2].entry,
            batch(1, "c"),
            "borrowed and owned encode alike"
        );
        let created = Entry::Created {
            deployment_id: "d".into(),
            application: "a".into(),
            hosts: vec!["h".into()],
            message: Some("m".into()),
        };
        assert_eq!(
            encode(&RecordRef {
                offset: 1,
                at_ms: 2,
                entry: created.as_ref()
            })
            .unwrap(),
            encode(&Record {
                offset: 1,
                at_ms: 2,
                entry: created
            })
            .unwrap()
        );
        // Wiped: a new epoch, offsets from 0.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let store = Store::open(config(dir.path()), |_| {}).unwrap();
        assert_ne!(store.epoch(), epoch);
        assert_eq!(store.next_offset(), 0);
    }

    #[test]
    fn segments_roll_are_bounded_and_read_in_order_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path()), |_| {}).unwrap();
        for i in 0..1000 {
            store
                .append(i, batch(2, &format!("r{i}")).as_ref())
                .unwrap();
        }
        assert_eq!(store.next_offset(), 2000);
        let segments = std::fs::read_dir(dir.path()).unwrap().count() - 1;
        assert!(segments > 2, "{segments} segments");
        let held: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(held <= 64 * 1024 + 4096, "{held} bytes held");
        let oldest = store.oldest_offset();
        assert!(oldest > 0, "old segments were dropped");
        // From the middle of a batch: that batch first, then in order.
        let start = oldest + 101;
        let mut reader = store.reader(start).unwrap();
        let mut offsets = Vec::new();
        loop {
            let chunk = reader.next_chunk(1990, 7).unwrap();
            if chunk.is_empty() {
                break;
            }
            offsets.extend(chunk.iter().map(|r| r.offset));
        }
        assert_eq!(offsets.first(), Some(&(start - 1)));
        assert_eq!(offsets.last(), Some(&1988));
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 2));
        // Older than held: the reader starts at the oldest.
        let mut reader = store.reader(0).unwrap();
        assert_eq!(reader.next_chunk(2000, 1).unwrap()[0].offset, oldest);
    }

    #[test]
    fn syncs_beside_appends_lose_nothing_and_reopen_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut unbounded = config(dir.path());
        unbounded.max_bytes = u64::MAX;
        let store = Store::open(unbounded.clone(), |_| {}).unwrap();
        // Syncs on another thread all along, rolls included: each takes
        // the writer's lock only to hand over the descriptor.
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    store.sync();
                }
            });
            for i in 0..500 {
                store
                    .append(i, batch(2, &format!("r{i}")).as_ref())
                    .unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        store.sync();
        assert!(
            !store.writer.lock().dirty,
            "the last sync covered everything"
        );
        drop(store);
        let mut offsets = Vec::new();
        let store = Store::open(unbounded, |record| offsets.push(record.offset)).unwrap();
        assert_eq!(store.next_offset(), 1000);
        assert_eq!(offsets, (0..500).map(|i| i * 2).collect::<Vec<u64>>());
    }

    #[test]
    fn a_reader_follows_the_log_as_it_grows_and_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path()), |_| {}).unwrap();
        store.append(0, batch(2, "a").as_ref()).unwrap();
        let mut reader = store.reader(1).unwrap();
        let mut seen = Vec::new();
        // A chunk up to an end, then more appended (rolling segments),
        // then on from where it stopped: nothing skipped, nothing twice.
        for round in 0..5 {
            let to = store.next_offset();
            loop {
                let chunk = reader.next_chunk(to, 3).unwrap();
                if chunk.is_empty() {
                    break;
                }
                seen.extend(chunk.iter().map(|r| r.offset));
            }
            for i in 0..60 {
                store
                    .append(i, batch(2, &format!("r{round}-{i}")).as_ref())
                    .unwrap();
            }
        }
        let expected: Vec<u64> = (0..1 + 4 * 60).map(|i| i * 2).collect();
        assert_eq!(seen, expected);
    }
}
