//! Read positions in log files, and the checkpoint file that keeps them
//! across restarts.
//!
//! A file is known by [`FileKey`]: device and inode, a CRC of its first
//! bytes, its birth time where the filesystem records one, and a random
//! generation given when the agent starts tracking it. A position
//! ([`FileOffset`]) also keeps a CRC of the bytes just before it (the
//! guard): on resume, a file is the checkpointed one only if all of these
//! still agree ([`FileOffset::resume_at`]), so a new file that reuses an old
//! inode and starts with the same header is read from its beginning.
//!
//! The checkpoint forgets: a file the tailer let go (read to its end and
//! gone, or rotated away and quiet) sends a release ([`FileOffset::released`])
//! that removes its entry once the relay acked everything before it.
//! The checkpoint only advances after the relay acked the lines before the
//! position; it is written atomically (write, fsync, rename, fsync dir),
//! and 0600.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file.
pub const FINGERPRINT_BYTES: usize = 256;
/// How many bytes before a position its guard covers.
pub const GUARD_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub device: u64,
    pub inode: u64,
    /// CRC32 of the first `fingerprint_len` bytes.
    pub fingerprint: u32,
    /// How many bytes the fingerprint covers (less than
    /// [`FINGERPRINT_BYTES`] while the file is short).
    pub fingerprint_len: u32,
    /// Birth time (statx `btime`) in nanoseconds since the epoch, where
    /// the filesystem records one.
    #[serde(default)]
    pub born_ns: Option<u64>,
    /// Random, given when the agent starts tracking a file (kept across
    /// restarts by resuming): two lives of one inode never share a key, so
    /// a new file's position replaces a stale one instead of merging.
    #[serde(default)]
    pub generation: u64,
}

impl FileKey {
    /// Whether a file with this inode, first bytes and birth time may be
    /// this file: same device and inode, the fingerprint of the shorter
    /// prefix agrees, and the birth times agree where both are known.
    pub fn same_file(&self, device: u64, inode: u64, prefix: &[u8], born_ns: Option<u64>) -> bool {
        if self.device != device || self.inode != inode {
            return false;
        }
        if let (Some(ours), Some(theirs)) = (self.born_ns, born_ns)
            && ours != theirs
        {
            return false;
        }
        let len = self.fingerprint_len as usize;
        prefix.len() >= len && crc32fast::hash(&prefix[..len]) == self.fingerprint
    }
}

/// Where reading stopped in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffset {
    pub key: FileKey,
    /// Bytes of the file consumed (up to the end of the last whole line).
    pub offset: u64,
    /// The path it had, for people reading the checkpoint and for finding
    /// its rotated siblings after a restart.
    pub path: String,
    /// The application whose logs it holds.
    #[serde(default)]
    pub application: String,
    /// CRC32 of the `guard_len` bytes just before `offset`.
    #[serde(default)]
    pub guard: u32,
    #[serde(default)]
    pub guard_len: u32,
    /// The file's length when this position was taken: what is known to
    /// be lost if the file disappears before it is read.
    #[serde(default)]
    pub size: u64,
    /// A release: the entry with exactly this key leaves the checkpoint.
    #[serde(default)]
    pub released: bool,
}

/// Where to resume a file that matched a checkpoint entry by inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The same file: continue at this position.
    At(u64),
    /// Another file on the same inode, or the same file cut shorter than
    /// the position, or rewritten before it: read it from the start.
    FromStart(&'static str),
}

impl FileOffset {
    /// A release of `key`.
    pub fn release(key: FileKey) -> FileOffset {
        FileOffset {
            key,
            offset: 0,
            path: String::new(),
            application: String::new(),
            guard: 0,
            guard_len: 0,
            size: 0,
            released: true,
        }
    }

    /// Decides where to resume a file with this inode whose length is
    /// `len`, whose first bytes are `prefix` and whose bytes just before
    /// this entry's offset are `before` (up to [`GUARD_BYTES`]).
    pub fn resume_at(
        &self,
        len: u64,
        prefix: &[u8],
        born_ns: Option<u64>,
        before: &[u8],
    ) -> Resume {
        let key = &self.key;
        if let (Some(ours), Some(theirs)) = (key.born_ns, born_ns)
            && ours != theirs
        {
            return Resume::FromStart("born at another time: a new file on a reused inode");
        }
        let fingerprint_len = key.fingerprint_len as usize;
        if prefix.len() < fingerprint_len
            || crc32fast::hash(&prefix[..fingerprint_len]) != key.fingerprint
        {
            return Resume::FromStart("its first bytes changed");
        }
        if self.offset > len {
            return Resume::FromStart("shorter than the saved position (truncated)");
        }
        let guard_len = self.guard_len as usize;
        if guard_len > 0
            && (before.len() < guard_len
                || crc32fast::hash(&before[before.len() - guard_len..]) != self.guard)
        {
            return Resume::FromStart("the bytes before the saved position changed");
        }
        Resume::At(self.offset)
    }
}

/// What one batch moved: file positions (and releases) and journal
/// cursors. Spooled with the batch, applied to the checkpoint once acked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Positions {
    pub files: Vec<FileOffset>,
    /// (application, cursor of the last journal entry in the batch).
    pub journals: Vec<(String, String)>,
}

impl Positions {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.journals.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Highest batch sequence the relay acknowledged.
    pub acked_sequence: u64,
    pub files: Vec<FileOffset>,
    /// Per application, the journal cursor after its last acknowledged
    /// entry.
    #[serde(default)]
    pub journals: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Accumulates positions in stream order, keeping releases so they can
    /// be applied later ([`Checkpoint::apply`]): for one inode, the same key
    /// keeps the furthest offset; another key (a new life of the inode, or
    /// new first bytes) replaces it; a release replaces only its own key.
    /// A later journal cursor replaces an earlier one.
    pub fn merge(&mut self, positions: &Positions) {
        for offset in &positions.files {
            let existing = self
                .files
                .iter_mut()
                .find(|f| f.key.device == offset.key.device && f.key.inode == offset.key.inode);
            match existing {
                None => self.files.push(offset.clone()),
                Some(existing) if offset.released => {
                    if existing.key == offset.key {
                        *existing = offset.clone();
                    }
                }
                Some(existing) if existing.key == offset.key && !existing.released => {
                    if offset.offset >= existing.offset {
                        *existing = offset.clone();
                    }
                }
                Some(existing) => *existing = offset.clone(),
            }
        }
        for (application, cursor) in &positions.journals {
            self.journals.insert(application.clone(), cursor.clone());
        }
    }

    /// Merges positions and drops released entries: the checkpoint after
    /// these batches were acknowledged.
    pub fn apply(&mut self, positions: &Positions) {
        self.merge(positions);
        self.files.retain(|f| !f.released);
    }

    /// The accumulated positions (releases kept), to apply elsewhere.
    pub fn into_positions(self) -> Positions {
        Positions {
            files: self.files,
            journals: self.journals.into_iter().collect(),
        }
    }
}

pub fn checkpoint_path(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoint.json")
}

/// Reads the checkpoint. A missing file is `Ok(None)`; an unreadable or
/// corrupt one is an error for the caller to report.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `contents` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    fs::File::open(dir)?.sync_all()
}

pub fn store(path: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(checkpoint).map_err(std::io::Error::other)?;
    write_atomically(path, &json)
}

/// A key of device 1 for tests.
#[cfg(test)]
pub(crate) fn test_key(inode: u64, generation: u64) -> FileKey {
    FileKey {
        device: 1,
        inode,
        fingerprint: crc32fast::hash(b"head"),
        fingerprint_len: 4,
        born_ns: None,
        generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(inode: u64, generation: u64) -> FileKey {
        test_key(inode, generation)
    }

    fn files(files: Vec<FileOffset>) -> Positions {
        Positions {
            files,
            journals: vec![],
        }
    }

    #[test]
    fn the_latest_journal_cursor_wins() {
        let mut checkpoint = Checkpoint::default();
        let cursor = |app: &str, c: &str| Positions {
            files: vec![],
            journals: vec![(app.into(), c.into())],
        };
        checkpoint.apply(&cursor("a", "c1"));
        checkpoint.apply(&cursor("b", "x1"));
        checkpoint.apply(&cursor("a", "c2"));
        assert_eq!(checkpoint.journals["a"], "c2");
        assert_eq!(checkpoint.journals["b"], "x1");
    }

    fn at(inode: u64, generation: u64, offset: u64) -> FileOffset {
        FileOffset {
            key: key(inode, generation),
            offset,
            path: "p".into(),
            application: "a".into(),
            guard: 0,
            guard_len: 0,
            size: offset,
            released: false,
        }
    }

    #[test]
    fn merge_keeps_the_furthest_offset_and_a_new_life_replaces_a_stale_one() {
        let mut checkpoint = Checkpoint::default();
        checkpoint.merge(&files(vec![at(1, 7, 100), at(2, 8, 5)]));
        checkpoint.merge(&files(vec![at(1, 7, 50)]));
        assert_eq!(
            checkpoint.files[0].offset, 100,
            "an older position of one life does not win"
        );
        // The same inode, same first bytes, tracked anew (inode reuse):
        // its smaller position replaces the stale larger one.
        checkpoint.merge(&files(vec![at(1, 9, 3)]));
        assert_eq!(checkpoint.files[0], at(1, 9, 3));
        assert_eq!(checkpoint.files.len(), 2);
    }

    #[test]
    fn releases_remove_only_their_own_key_once_applied() {
        // Accumulated in stream order (a spool's unacknowledged batches),
        // then applied to the checkpoint.
        // (name, checkpoint before, batches, checkpoint after)
        type Case = (
            &'static str,
            Vec<FileOffset>,
            Vec<FileOffset>,
            Vec<FileOffset>,
        );
        let cases: &[Case] = &[
            (
                "release of a held entry",
                vec![at(1, 1, 10)],
                vec![FileOffset::release(key(1, 1))],
                vec![],
            ),
            (
                "release of another life keeps the new one",
                vec![at(1, 1, 10)],
                vec![at(1, 2, 4), FileOffset::release(key(1, 1))],
                vec![at(1, 2, 4)],
            ),
            (
                "a new life after the release stays",
                vec![at(1, 1, 10)],
                vec![FileOffset::release(key(1, 1)), at(1, 2, 4)],
                vec![at(1, 2, 4)],
            ),
            (
                "release of an unknown key changes nothing",
                vec![at(1, 1, 10)],
                vec![FileOffset::release(key(2, 5))],
                vec![at(1, 1, 10)],
            ),
            (
                "positions then release in one batch",
                vec![],
                vec![at(3, 1, 8), FileOffset::release(key(3, 1))],
                vec![],
            ),
        ];
        for (name, before, batches, expected) in cases {
            let mut pending = Checkpoint::default();
            pending.merge(&files(batches.clone()));
            let mut checkpoint = Checkpoint {
                files: before.clone(),
                ..Checkpoint::default()
            };
            checkpoint.apply(&pending.into_positions());
            assert_eq!(&checkpoint.files, expected, "{name}");
        }
    }

    #[test]
    fn resume_checks_birth_fingerprint_length_and_guard() {
        let head = b"head and more";
        let before = b"bytes before the position";
        let mut entry = at(1, 1, 100);
        entry.key.born_ns = Some(42);
        entry.guard = crc32fast::hash(&before[5..]);
        entry.guard_len = (before.len() - 5) as u32;
        // (name, length, first bytes, birth, bytes before, resumes)
        type Case<'a> = (&'a str, u64, &'a [u8], Option<u64>, &'a [u8], bool);
        let cases: &[Case] = &[
            ("the same file", 150, head, Some(42), before, true),
            (
                "the same file, birth time unknown now",
                150,
                head,
                None,
                before,
                true,
            ),
            ("born at another time", 150, head, Some(43), before, false),
            (
                "other first bytes",
                150,
                b"HEAD and more",
                Some(42),
                before,
                false,
            ),
            (
                "shorter than the position",
                99,
                head,
                Some(42),
                before,
                false,
            ),
            ("exactly at the position", 100, head, Some(42), before, true),
            (
                "other bytes before the position",
                150,
                head,
                Some(42),
                b"bytes before the POSITION",
                false,
            ),
            (
                "fewer bytes before the position than guarded",
                150,
                head,
                Some(42),
                b"ion",
                false,
            ),
        ];
        for (name, len, prefix, born, before, same) in cases {
            let got = entry.resume_at(*len, prefix, *born, before);
            assert_eq!(got == Resume::At(100), *same, "{name}: {got:?}");
        }
        // An entry from an older checkpoint (no birth, no guard) resumes on
        // the fingerprint alone, as before.
        let legacy = at(1, 0, 100);
        assert_eq!(legacy.resume_at(150, head, Some(7), b""), Resume::At(100));
    }

    #[test]
    fn an_older_checkpoint_without_the_new_fields_loads() {
        let json = br#"{"acked_sequence":3,"files":[{"key":{"device":1,"inode":2,"fingerprint":3,"fingerprint_len":4},"offset":5,"path":"/x.log"}]}"#;
        let checkpoint: Checkpoint = serde_json::from_slice(json).unwrap();
        assert_eq!(checkpoint.files[0].offset, 5);
        assert_eq!(checkpoint.files[0].key.born_ns, None);
        assert!(!checkpoint.files[0].released);
    }

    #[test]
    fn store_and_load_round_trip_and_corruption_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path());
        assert_eq!(load(&path).unwrap(), None);
        let checkpoint = Checkpoint {
            acked_sequence: 42,
            files: vec![at(1, 2, 3)],
            journals: BTreeMap::from([("app".to_owned(), "s=1;i=2".to_owned())]),
        };
        store(&path, &checkpoint).unwrap();
        assert_eq!(load(&path).unwrap(), Some(checkpoint));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state files are private");
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("corrupt"));
    }

    #[test]
    fn same_file_checks_the_fingerprint_prefix_and_birth() {
        let prefix = b"abcdef";
        let key = FileKey {
            device: 1,
            inode: 2,
            fingerprint: crc32fast::hash(b"abcd"),
            fingerprint_len: 4,
            born_ns: Some(9),
            generation: 1,
        };
        assert!(key.same_file(1, 2, prefix, Some(9)));
        assert!(key.same_file(1, 2, prefix, None));
        assert!(!key.same_file(1, 2, prefix, Some(10)));
        assert!(!key.same_file(1, 2, b"xbcdef", Some(9)));
        assert!(!key.same_file(1, 3, prefix, Some(9)));
        assert!(
            !key.same_file(1, 2, b"ab", Some(9)),
            "shorter than the fingerprint: truncated or new"
        );
    }
}
