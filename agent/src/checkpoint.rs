//! Read positions in log files, and the checkpoint file that keeps them
//! across restarts.
//!
//! A file is known by [`FileKey`]: device and inode plus a CRC of its first
//! bytes, so a new file that reuses an old inode is not mistaken for it.
//! The checkpoint only advances after the relay acked the lines before the
//! position; it is written atomically (write, fsync, rename, fsync dir).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file.
pub const FINGERPRINT_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub device: u64,
    pub inode: u64,
    /// CRC32 of the first `fingerprint_len` bytes.
    pub fingerprint: u32,
    /// How many bytes the fingerprint covers (less than
    /// [`FINGERPRINT_BYTES`] while the file is short).
    pub fingerprint_len: u32,
}

impl FileKey {
    /// Whether `other` (the same inode, seen again) is the same file: same
    /// device and inode, and the fingerprint of the shorter prefix agrees.
    pub fn same_file(&self, device: u64, inode: u64, prefix: &[u8]) -> bool {
        if self.device != device || self.inode != inode {
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
    /// The path it had, for people reading the checkpoint.
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Highest batch sequence the relay acknowledged.
    pub acked_sequence: u64,
    pub files: Vec<FileOffset>,
}

impl Checkpoint {
    /// Merges positions: for each file, the furthest offset wins.
    pub fn merge(&mut self, offsets: &[FileOffset]) {
        for offset in offsets {
            match self
                .files
                .iter_mut()
                .find(|f| f.key.device == offset.key.device && f.key.inode == offset.key.inode)
            {
                Some(existing) if existing.key == offset.key => {
                    if offset.offset >= existing.offset {
                        existing.offset = offset.offset;
                        existing.path.clone_from(&offset.path);
                    }
                }
                // Same inode, another file (inode reused, or a short file's
                // fingerprint grew): the newer position replaces it.
                Some(existing) => *existing = offset.clone(),
                None => self.files.push(offset.clone()),
            }
        }
    }

    /// Forgets files not seen for a while, so the checkpoint does not grow
    /// with every rotated file forever.
    pub fn retain_files(&mut self, keep: impl Fn(&FileOffset) -> bool) {
        self.files.retain(keep);
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
        let mut file = fs::File::create(&temporary)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(inode: u64, fingerprint: u32) -> FileKey {
        FileKey {
            device: 1,
            inode,
            fingerprint,
            fingerprint_len: 4,
        }
    }

    #[test]
    fn merge_keeps_the_furthest_offset_and_replaces_reused_inodes() {
        let mut checkpoint = Checkpoint::default();
        let at = |inode, fingerprint, offset| FileOffset {
            key: key(inode, fingerprint),
            offset,
            path: "p".into(),
        };
        checkpoint.merge(&[at(1, 7, 100), at(2, 8, 5)]);
        checkpoint.merge(&[at(1, 7, 50)]);
        assert_eq!(
            checkpoint.files[0].offset, 100,
            "older position does not win"
        );
        checkpoint.merge(&[at(1, 9, 3)]);
        assert_eq!(
            checkpoint.files[0],
            at(1, 9, 3),
            "a reused inode is a new file"
        );
    }

    #[test]
    fn store_and_load_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path());
        assert_eq!(load(&path).unwrap(), None);
        let checkpoint = Checkpoint {
            acked_sequence: 42,
            files: vec![],
        };
        store(&path, &checkpoint).unwrap();
        assert_eq!(load(&path).unwrap(), Some(checkpoint));
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("corrupt"));
    }

    #[test]
    fn same_file_checks_the_fingerprint_prefix() {
        let prefix = b"abcdef";
        let key = FileKey {
            device: 1,
            inode: 2,
            fingerprint: crc32fast::hash(b"abcd"),
            fingerprint_len: 4,
        };
        assert!(key.same_file(1, 2, prefix));
        assert!(!key.same_file(1, 2, b"xbcdef"));
        assert!(!key.same_file(1, 3, prefix));
        assert!(
            !key.same_file(1, 2, b"ab"),
            "shorter than the fingerprint: truncated or new"
        );
    }
}
