//! The on-disk spool: every batch is written here before it is sent, and
//! stays until the relay acked it and the checkpoint covers it.
//!
//! A small segmented log rather than an embedded database (redb, sled):
//! the access pattern is append at the tail, read forward, delete whole
//! segments at the head, which a log does with sequential I/O and no
//! write amplification, and a torn tail is cut off with a checksum scan.
//!
//! Segment files are named by the first sequence they hold
//! (`00000000000000000042.seg`). A record is
//!
//! ```text
//! [u32 body length][u32 CRC32 of body][body = u32 header length, header, frame]
//! ```
//!
//! where the header (postcard) holds the sequence, the item count and the
//! file positions after the batch's lines, and the frame is the exact wire
//! frame sent to the relay. On open, each segment is scanned; a record that
//! is short or fails its checksum ends the segment there (the rest is cut
//! off and reported), so a crash mid-write is never fatal.
//!
//! Writes reach the page cache at once and the disk every
//! `fsync_interval`: `pipeline::run_spool_sync` takes a duplicate of the
//! current segment's descriptor under the lock and syncs it outside, so a
//! slow disk never holds the batcher or the sender.
//!
//! When the spool exceeds `max_bytes`, the oldest segment is dropped; the
//! unacknowledged items in it are counted, and a batch carrying
//! `dropped_items` is appended so the relay learns of the loss.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use o1_common::wire::{self, Item};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, FileKey, FileOffset, Positions};

#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync_interval: Duration,
    /// Largest frame the relay accepts.
    pub max_frame: usize,
}

/// Marks a record header of this version: an overlong varint, which no
/// header of the first version (postcard, canonical varints) starts with.
const HEADER_V2: [u8; 2] = [0x80, 0x00];

#[derive(Debug, Serialize, Deserialize)]
struct RecordHeader {
    sequence: u64,
    items: u32,
    /// The drop count this batch reports, carried on if it is dropped too.
    dropped_items: u64,
    positions: Positions,
}

/// The first version's header (before birth times, guards and releases),
/// still read so that an upgrade keeps a full spool.
#[derive(Debug, Deserialize)]
struct RecordHeaderV1 {
    sequence: u64,
    items: u32,
    dropped_items: u64,
    offsets: Vec<FileOffsetV1>,
}

#[derive(Debug, Deserialize)]
struct FileOffsetV1 {
    key: FileKeyV1,
    offset: u64,
    path: String,
}

#[derive(Debug, Deserialize)]
struct FileKeyV1 {
    device: u64,
    inode: u64,
    fingerprint: u32,
    fingerprint_len: u32,
}

impl From<RecordHeaderV1> for RecordHeader {
    fn from(v1: RecordHeaderV1) -> Self {
        RecordHeader {
            sequence: v1.sequence,
            items: v1.items,
            dropped_items: v1.dropped_items,
            positions: Positions {
                journals: Vec::new(),
                files: v1
                    .offsets
                    .into_iter()
                    .map(|o| FileOffset {
                        key: FileKey {
                            device: o.key.device,
                            inode: o.key.inode,
                            fingerprint: o.key.fingerprint,
                            fingerprint_len: o.key.fingerprint_len,
                            born_ns: None,
                            generation: 0,
                        },
                        offset: o.offset,
                        path: o.path,
                        application: String::new(),
                        guard: 0,
                        guard_len: 0,
                        size: 0,
                        released: false,
                    })
                    .collect(),
            },
        }
    }
}

/// Reads a record header of either version.
fn decode_header(bytes: &[u8]) -> Option<RecordHeader> {
    match bytes.strip_prefix(&HEADER_V2) {
        Some(v2) => postcard::from_bytes(v2).ok(),
        None => postcard::from_bytes::<RecordHeaderV1>(bytes)
            .ok()
            .map(Into::into),
    }
}

#[derive(Debug)]
struct Segment {
    first_sequence: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

#[derive(Debug)]
struct Record {
    sequence: u64,
    segment: u64,
    frame_at: u64,
    frame_len: u32,
    items: u32,
    dropped_items: u64,
    positions: Positions,
}

/// What opening found.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    pub records: usize,
    /// Bytes cut off because a record was torn or corrupt.
    pub truncated_bytes: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    segments: VecDeque<Segment>,
    records: VecDeque<Record>,
    acked: u64,
    next_sequence: u64,
    total_bytes: u64,
    last_sync: Instant,
    unsynced: bool,
    /// Unacknowledged items dropped because the spool was full, since start.
    pub dropped_items_total: u64,
}

fn segment_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.seg")
}

const RECORD_OVERHEAD: usize = 12;

impl Spool {
    /// Opens (or creates) the spool in `dir`. `acked` is the checkpoint's
    /// acknowledged sequence: records up to it are not sent again.
    /// Opens the spool in `dir`, reading every segment back: torn or
    /// corrupt ends are cut off (and counted in [`Recovery`]), records
    /// acknowledged already (`acked`) are skipped when sent.
    pub fn open(dir: &Path, limits: SpoolLimits, acked: u64) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let stem = path.file_name()?.to_str()?.strip_suffix(".seg")?;
                Some((stem.parse().ok()?, path))
            })
            .collect();
        names.sort();
        let mut spool = Spool {
            dir: dir.to_owned(),
            limits,
            segments: VecDeque::new(),
            records: VecDeque::new(),
            acked,
            next_sequence: acked + 1,
            total_bytes: 0,
            last_sync: Instant::now(),
            unsynced: false,
            dropped_items_total: 0,
        };
        let mut recovery = Recovery::default();
        for (first_sequence, path) in names {
            let bytes = fs::read(&path)?;
            let (records, at) = scan_segment(&bytes, first_sequence);
            if at < bytes.len() {
                recovery.truncated_bytes += (bytes.len() - at) as u64;
                tracing::warn!(
                    segment = %path.display(),
                    cut_bytes = bytes.len() - at,
                    "spool segment ends in a torn or corrupt record; cutting it off"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(at as u64)?;
                file.sync_all()?;
            }
            if records.is_empty() {
                fs::remove_file(&path)?;
                continue;
            }
            // Sequences must continue across segments; a gap means a lost
            // segment, which is reported and accepted.
            if let Some(last) = spool.records.back()
                && records[0].sequence != last.sequence + 1
            {
                tracing::warn!(
                    expected = last.sequence + 1,
                    found = records[0].sequence,
                    "spool sequence gap"
                );
            }
            spool.next_sequence = spool
                .next_sequence
                .max(records[records.len() - 1].sequence + 1);
            recovery.records += records.len();
            spool.total_bytes += at as u64;
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            spool.segments.push_back(Segment {
                first_sequence,
                path,
                file,
                len: at as u64,
            });
            spool.records.extend(records);
        }
        // A gap inside the kept records would break index arithmetic: keep
        // only the contiguous run at the end.
        let mut keep_from = 0;
        for i in 1..spool.records.len() {
            if spool.records[i].sequence != spool.records[i - 1].sequence + 1 {
                keep_from = i;
            }
        }
        spool.records.drain(..keep_from);
        Ok((spool, recovery))
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The sequence the next batch gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The first sequence not yet acknowledged that is still held.
    pub fn first_unacked(&self) -> Option<u64> {
        let front = self.records.front()?.sequence;
        let first = front.max(self.acked + 1);
        (first < self.next_sequence).then_some(first)
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn unacked_batches(&self) -> u64 {
        self.next_sequence.saturating_sub(self.acked + 1)
    }

    /// Positions after every batch not yet acknowledged, merged: where
    /// tailing resumes after a restart (on top of the checkpoint).
    pub fn pending_offsets(&self) -> Positions {
        let mut merged = Checkpoint::default();
        for record in self.records.iter().filter(|r| r.sequence > self.acked) {
            merged.merge(&record.positions);
        }
        merged.into_positions()
    }

    /// Writes a batch with file positions only; returns its sequence.
    pub fn append(&mut self, items: Vec<Item>, offsets: Vec<FileOffset>) -> io::Result<u64> {
        let positions = Positions {
            files: offsets,
            journals: Vec::new(),
        };
        self.append_batch(items, positions)
    }

    /// Writes a batch and the positions it moved; returns its sequence.
    pub fn append_batch(&mut self, items: Vec<Item>, positions: Positions) -> io::Result<u64> {
        let sequence = self.write_record(items, positions, 0)?;
        self.enforce_limit()?;
        Ok(sequence)
    }

    fn write_record(
        &mut self,
        items: Vec<Item>,
        positions: Positions,
        dropped_items: u64,
    ) -> io::Result<u64> {
        let sequence = self.next_sequence;
        let item_count = items.len() as u32;
        let frame = wire::encode_batch(sequence, items, dropped_items, self.limits.max_frame)
            .map_err(io::Error::other)?;
        let header = RecordHeader {
            sequence,
            items: item_count,
            dropped_items,
            positions,
        };
        let mut header_bytes = HEADER_V2.to_vec();
        header_bytes = postcard::to_extend(&header, header_bytes).map_err(io::Error::other)?;
        let body_len = 4 + header_bytes.len() + frame.len();
        let mut record = Vec::with_capacity(RECORD_OVERHEAD + header_bytes.len() + frame.len());
        record.extend_from_slice(&(body_len as u32).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
        record.extend_from_slice(&header_bytes);
        record.extend_from_slice(&frame);
        let crc = crc32fast::hash(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());

        let needs_new = self
            .segments
            .back()
            .is_none_or(|s| s.len > 0 && s.len + record.len() as u64 > self.limits.segment_bytes);
        if needs_new {
            self.roll(sequence)?;
        }
        let Some(segment) = self.segments.back_mut() else {
            return Err(io::Error::other("spool has no segment to write to"));
        };
        let frame_at = segment.len + (RECORD_OVERHEAD + header_bytes.len()) as u64;
        segment.file.write_all(&record)?;
        segment.len += record.len() as u64;
        self.total_bytes += record.len() as u64;
        self.unsynced = true;
        self.records.push_back(Record {
            sequence,
            segment: segment.first_sequence,
            frame_at,
            frame_len: frame.len() as u32,
            items: item_count,
            dropped_items,
            positions: header.positions,
        });
        self.next_sequence += 1;
        Ok(sequence)
    }

    fn roll(&mut self, first_sequence: u64) -> io::Result<()> {
        if let Some(current) = self.segments.back() {
            current.file.sync_data()?;
        }
        let path = self.dir.join(segment_name(first_sequence));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)?
        };
        self.segments.push_back(Segment {
            first_sequence,
            path,
            file,
            len: 0,
        });
        Ok(())
    }

    fn enforce_limit(&mut self) -> io::Result<()> {
        let mut dropped = 0u64;
        let mut carried = 0u64;
        while self.total_bytes > self.limits.max_bytes && self.segments.len() > 1 {
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            while self
                .records
                .front()
                .is_some_and(|r| r.segment == oldest.first_sequence)
            {
                if let Some(record) = self.records.pop_front()
                    && record.sequence > self.acked
                {
                    dropped += u64::from(record.items);
                    // A report that is itself dropped is carried into the
                    // next one, so the relay still hears of every loss.
                    carried += record.dropped_items;
                }
            }
            self.total_bytes -= oldest.len;
            drop(oldest.file);
            fs::remove_file(&oldest.path)?;
        }
        if dropped > 0 {
            self.dropped_items_total += dropped;
            tracing::warn!(
                dropped_items = dropped,
                "spool full: dropped the oldest unsent items"
            );
            self.write_record(Vec::new(), Positions::default(), dropped + carried)?;
        } else if carried > 0 {
            self.write_record(Vec::new(), Positions::default(), carried)?;
        }
        Ok(())
    }

    /// How long until what was written unsynced is due for a sync
    /// (`fsync_interval` after the last one); `None` when nothing is.
    pub fn sync_due_in(&self) -> Option<Duration> {
        self.unsynced.then(|| {
            self.limits
                .fsync_interval
                .saturating_sub(self.last_sync.elapsed())
        })
    }

    /// A duplicate of the current segment's descriptor when unsynced
    /// writes are due, counted as synced: the caller syncs it after letting
    /// go of the spool, so the batcher and the sender never wait for the
    /// disk. If that sync fails, [`Spool::sync_failed`].
    pub fn take_sync(&mut self) -> io::Result<Option<File>> {
        if self.sync_due_in() != Some(Duration::ZERO) {
            return Ok(None);
        }
        let Some(segment) = self.segments.back() else {
            return Ok(None);
        };
        let file = segment.file.try_clone()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(Some(file))
    }

    /// A sync of [`Spool::take_sync`]'s descriptor failed: what it covered
    /// is unsynced again.
    pub fn sync_failed(&mut self) {
        self.unsynced = true;
    }

    /// fsyncs the current segment if anything written is unsynced, at
    /// once: the agent's last act at stop (while running,
    /// `pipeline::run_spool_sync` syncs every interval, outside the lock).
    pub fn maybe_sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some(segment) = self.segments.back() {
                segment.file.sync_data()?;
            }
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// The wire frame of batch `sequence`, if still held.
    pub fn frame(&self, sequence: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(front) = self.records.front() else {
            return Ok(None);
        };
        let Some(index) = sequence.checked_sub(front.sequence) else {
            return Ok(None);
        };
        let Some(record) = self.records.get(index as usize) else {
            return Ok(None);
        };
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.first_sequence == record.segment)
        else {
            return Ok(None);
        };
        let mut frame = vec![0u8; record.frame_len as usize];
        segment.file.read_exact_at(&mut frame, record.frame_at)?;
        Ok(Some(frame))
    }

    /// Marks everything up to `sequence` acknowledged; returns the file
    /// positions those batches reached, for the checkpoint.
    pub fn ack(&mut self, sequence: u64) -> Positions {
        let sequence = sequence.min(self.next_sequence.saturating_sub(1));
        if sequence <= self.acked {
            return Positions::default();
        }
        let mut merged = Checkpoint::default();
        for record in self
            .records
            .iter()
            .filter(|r| r.sequence > self.acked && r.sequence <= sequence)
        {
            merged.merge(&record.positions);
        }
        self.acked = sequence;
        merged.into_positions()
    }

    /// Deletes segments whose batches are all acknowledged up to `upto`
    /// (called once the checkpoint covering them is on disk).
    pub fn release(&mut self, upto: u64) -> io::Result<()> {
        let upto = upto.min(self.acked);
        while let Some(oldest) = self.segments.front() {
            let last_in_segment = self
                .records
                .iter()
                .take_while(|r| r.segment == oldest.first_sequence)
                .last()
                .map(|r| r.sequence);
            let is_current = self.segments.len() == 1;
            match last_in_segment {
                Some(last) if last <= upto => {
                    if is_current
                        && oldest.len < self.limits.segment_bytes / 2
                        && self.next_sequence - 1 > upto
                    {
                        break;
                    }
                    let Some(segment) = self.segments.pop_front() else {
                        break;
                    };
                    while self
                        .records
                        .front()
                        .is_some_and(|r| r.segment == segment.first_sequence)
                    {
                        self.records.pop_front();
                    }
                    self.total_bytes -= segment.len;
                    drop(segment.file);
                    fs::remove_file(&segment.path)?;
                }
                None if !is_current => {
                    let Some(segment) = self.segments.pop_front() else {
                        break;
                    };
                    self.total_bytes -= segment.len;
                    fs::remove_file(&segment.path)?;
                }
                _ => break,
            }
        }
        Ok(())
    }
}

/// Parses one record: (header, frame offset within the record, frame
/// length, total record length). `None` if short or corrupt.
fn parse_record(bytes: &[u8]) -> Option<(RecordHeader, usize, u32, usize)> {
    let body_len = u32::from_le_bytes(*bytes.first_chunk::<4>()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(8..8 + body_len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let header_len = u32::from_le_bytes(*body.first_chunk::<4>()?) as usize;
    let header_bytes = body.get(4..4 + header_len)?;
    let header = decode_header(header_bytes)?;
    let frame_len = body_len.checked_sub(4 + header_len)? as u32;
    Some((
        header,
        RECORD_OVERHEAD + header_len,
        frame_len,
        8 + body_len,
    ))
}

/// The records of one segment whose first sequence is `first_sequence`,
/// and the length of its valid part: the scan stops at the first record
/// that is torn, corrupt or out of sequence.
fn scan_segment(bytes: &[u8], first_sequence: u64) -> (Vec<Record>, usize) {
    let mut at = 0usize;
    let mut records: Vec<Record> = Vec::new();
    while at < bytes.len() {
        let expected = records.last().map_or(first_sequence, |r| r.sequence + 1);
        match parse_record(&bytes[at..]) {
            Some((header, frame_offset, frame_len, total)) if header.sequence == expected => {
                records.push(Record {
                    sequence: header.sequence,
                    segment: first_sequence,
                    frame_at: (at + frame_offset) as u64,
                    frame_len,
                    items: header.items,
                    dropped_items: header.dropped_items,
                    positions: header.positions,
                });
                at += total;
            }
            _ => break,
        }
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use o1_common::Level;
    use o1_common::wire::{AgentMessage, Batch};
    use o1_common::wire::{Decoded, LogRecord, decode_frame};

    fn limits(max_bytes: u64, segment_bytes: u64) -> SpoolLimits {
        SpoolLimits {
            max_bytes,
            segment_bytes,
            fsync_interval: Duration::from_secs(1),
            max_frame: wire::DEFAULT_MAX_FRAME,
        }
    }

    fn line(n: u64) -> Item {
        Item::Log(LogRecord {
            application: "app".into(),
            timestamp_ms: 0,
            level: Level::Info,
            message: format!("line {n:06} {}", "x".repeat(80)),
            deployment_id: None,
        })
    }

    fn batch_of(spool: &Spool, sequence: u64) -> Batch {
        let frame = spool.frame(sequence).unwrap().expect("held");
        match decode_frame::<AgentMessage>(&frame, wire::DEFAULT_MAX_FRAME).unwrap() {
            Decoded::Frame {
                message: AgentMessage::Batch(batch),
                ..
            } => batch,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syncs_are_handed_out_once_per_interval_and_again_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut immediate = limits(1 << 20, 64 << 10);
        immediate.fsync_interval = Duration::ZERO;
        let (mut spool, _) = Spool::open(dir.path(), immediate, 0).unwrap();
        // Nothing written: nothing to sync.
        assert_eq!(spool.sync_due_in(), None);
        assert!(spool.take_sync().unwrap().is_none());
        spool.append(vec![line(1)], vec![]).unwrap();
        assert_eq!(spool.sync_due_in(), Some(Duration::ZERO));
        // The descriptor handed out is the current segment's: it syncs.
        let file = spool.take_sync().unwrap().expect("due");
        file.sync_data().unwrap();
        assert_eq!(file.metadata().unwrap().len(), spool.bytes());
        // Counted as synced until more is written, or the sync failed.
        assert_eq!(spool.sync_due_in(), None);
        assert!(spool.take_sync().unwrap().is_none());
        spool.sync_failed();
        assert!(spool.take_sync().unwrap().is_some());
        // With an interval, writes wait for it; appending never syncs.
        let other = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(other.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        spool.append(vec![line(2)], vec![]).unwrap();
        let due_in = spool.sync_due_in().expect("unsynced");
        assert!(due_in > Duration::ZERO && due_in <= Duration::from_secs(1));
        assert!(spool.take_sync().unwrap().is_none());
    }

    #[test]
    fn survives_reopen_and_resumes_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        for n in 0..10 {
            assert_eq!(spool.append(vec![line(n)], vec![]).unwrap(), n + 1);
        }
        spool.ack(4);
        drop(spool);
        let (spool, recovery) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 4).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                records: 10,
                truncated_bytes: 0
            }
        );
        assert_eq!(spool.first_unacked(), Some(5));
        assert_eq!(spool.next_sequence(), 11);
        assert_eq!(batch_of(&spool, 7).items, vec![line(6)]);
    }

    #[test]
    fn a_spool_written_by_the_first_version_is_read_after_an_upgrade() {
        // A record as the first version wrote it: no header marker, file
        // positions without birth time, guard or release.
        let dir = tempfile::tempdir().unwrap();
        let v1_offsets = vec![(
            (1u64, 2u64, 3u32, 4u32),
            500u64,
            "/var/log/app.log".to_owned(),
        )];
        let header = postcard::to_allocvec(&(1u64, 1u32, 0u64, v1_offsets)).unwrap();
        let frame = wire::encode_batch(1, vec![line(0)], 0, wire::DEFAULT_MAX_FRAME).unwrap();
        let mut body = (header.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&header);
        body.extend_from_slice(&frame);
        let mut record = (body.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        fs::write(dir.path().join(segment_name(1)), &record).unwrap();

        let (mut spool, recovery) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        assert_eq!(recovery.records, 1, "nothing cut: {recovery:?}");
        assert_eq!(batch_of(&spool, 1).items, vec![line(0)]);
        let pending = spool.pending_offsets().files;
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].key.inode, pending[0].offset), (2, 500));
        assert_eq!(pending[0].key.born_ns, None);
        // New records go after it, in the new format, and both read back.
        spool
            .append(vec![line(1)], vec![FileOffset::release(pending[0].key)])
            .unwrap();
        drop(spool);
        let (spool, recovery) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        assert_eq!(recovery.records, 2);
        assert!(
            spool.pending_offsets().files.iter().all(|o| o.released),
            "the release is kept"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        for n in 0..3 {
            spool.append(vec![line(n)], vec![]).unwrap();
        }
        drop(spool);
        let segment = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let len = fs::metadata(&segment).unwrap().len();
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(len - 10).unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        assert_eq!(recovery.records, 2);
        assert!(recovery.truncated_bytes > 0);
        assert_eq!(
            spool.append(vec![line(9)], vec![]).unwrap(),
            3,
            "the cut batch's sequence is reused"
        );
        assert_eq!(batch_of(&spool, 3).items, vec![line(9)]);
    }

    #[test]
    fn garbage_in_the_middle_cuts_the_rest_of_that_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        for n in 0..3 {
            spool.append(vec![line(n)], vec![]).unwrap();
        }
        drop(spool);
        let segment = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = fs::read(&segment).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&segment, bytes).unwrap();
        let (spool, recovery) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        assert_eq!(recovery.records, 1);
        assert_eq!(spool.first_unacked(), Some(1));
    }

    #[test]
    fn full_spool_drops_oldest_and_reports_the_count() {
        let dir = tempfile::tempdir().unwrap();
        // ~150-byte records, 64 KiB segments, 128 KiB total.
        let (mut spool, _) = Spool::open(dir.path(), limits(128 << 10, 64 << 10), 0).unwrap();
        for n in 0..2000 {
            spool.append(vec![line(n)], vec![]).unwrap();
        }
        assert!(spool.bytes() <= 128 << 10);
        assert!(spool.dropped_items_total > 0);
        let first = spool.first_unacked().unwrap();
        assert!(first > 1, "oldest batches are gone");
        let reports: u64 = (first..spool.next_sequence())
            .map(|s| batch_of(&spool, s).dropped_items)
            .sum();
        assert_eq!(
            reports, spool.dropped_items_total,
            "every drop is reported in a batch"
        );
    }

    #[test]
    fn release_deletes_acknowledged_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), limits(1 << 20, 64 << 10), 0).unwrap();
        for n in 0..1500 {
            spool.append(vec![line(n)], vec![]).unwrap();
        }
        let segments_before = fs::read_dir(dir.path()).unwrap().count();
        assert!(segments_before > 2);
        spool.ack(1500);
        spool.release(1500).unwrap();
        assert!(fs::read_dir(dir.path()).unwrap().count() <= 1);
        assert_eq!(spool.first_unacked(), None);
        assert_eq!(spool.append(vec![line(0)], vec![]).unwrap(), 1501);
    }
}
