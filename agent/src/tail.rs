//! Log tailing: follows files by identity through rotation, reads whole
//! lines, and hands them to the batcher with the position after them.
//!
//! - Directories are watched (notify), not files, so rotation never loses
//!   the watch; a data event reads the tracked files, any other event (or
//!   notify's rescan signal) re-scans the globs, and a periodic re-scan is
//!   the backstop. `logs.watch = "poll"` re-scans on a timer instead, for
//!   filesystems without inotify.
//! - A file is tracked by device+inode with a fingerprint of its first
//!   bytes ([`FileKey`]); the open handle keeps reading a renamed file to
//!   its end, and is let go once the file is gone from the globs (or
//!   deleted) and has been quiet for [`RELEASE_AFTER`].
//! - copytruncate is seen as a file shorter than the read position, or whose
//!   first bytes changed: reading restarts at 0.
//! - A line without its newline is held until it is complete, or sent after
//!   `logs.partial_line_timeout_ms`; a line longer than
//!   `logs.max_line_bytes` is cut there and ends with `…[truncated]`; bytes
//!   that are not UTF-8 become U+FFFD.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use o1_common::Timestamp;
use o1_common::wire::{Item, LogRecord};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{FINGERPRINT_BYTES, FileKey, FileOffset, GUARD_BYTES, Resume};
use crate::config::{LogsConfig, Multiline, StartAt, WatchMode};
use crate::lines::LineAssembler;
use crate::pipeline::{Event, Position};

/// A file that left the globs (rotated away, deleted) is closed once it has
/// not grown for this long.
pub const RELEASE_AFTER: Duration = Duration::from_secs(5);
/// Bytes read from one file before moving to the next (fairness).
const READ_BUDGET: usize = 4 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;
/// On stop, how long the tailer may take to read tracked files to their
/// end before it gives up (the rest is read after the restart).
pub const STOP_DRAIN: Duration = Duration::from_secs(2);
/// Names of compressed rotated files, which are not read.
const COMPRESSED: &[&str] = &[
    ".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".z", ".Z", ".zip", ".br",
];

/// The log files of one application.
#[derive(Debug, Clone)]
pub struct AppLogs {
    pub name: String,
    pub patterns: Vec<String>,
    pub multiline: Multiline,
    /// Follow symbolic links (otherwise they are skipped and reported).
    pub follow_symlinks: bool,
}

#[derive(Debug)]
struct Tracked {
    key: FileKey,
    path: PathBuf,
    app: usize,
    file: File,
    /// Lines read so far, and the positions read and handed out.
    lines: LineAssembler,
    /// The file's length when last looked at.
    size: u64,
    last_growth: Instant,
    /// Gone from the globs since.
    missing_since: Option<Instant>,
    /// Discovery order: older files are read first, so a rotated file's
    /// last lines go out before the new file's first ones.
    discovered: u64,
}

enum Wake {
    Data,
    Rescan,
}

pub struct Tailer {
    apps: Vec<AppLogs>,
    config: LogsConfig,
    files: HashMap<(u64, u64), Tracked>,
    resume: Vec<FileOffset>,
    /// When the agent last wrote its checkpoint before this start (`None`
    /// on a first run): rotated files changed after it are read whole.
    stopped_at: Option<SystemTime>,
    first_run: bool,
    events: SyncSender<Event>,
    unreadable: HashSet<PathBuf>,
    warned_max_files: bool,
    buffer: Vec<u8>,
    discovered: u64,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

fn now_millis() -> i64 {
    Timestamp::now().unix_millis
}

/// The directory to watch for a pattern: its parent when that has no glob
/// characters (non-recursive), else the longest literal prefix (recursive).
fn watch_target(pattern: &str) -> (PathBuf, bool) {
    let path = Path::new(pattern);
    let is_glob = |s: &str| s.contains(['*', '?', '[']);
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !is_glob(&parent.to_string_lossy()) {
        return (parent.to_owned(), false);
    }
    let mut literal = PathBuf::new();
    for component in path.components() {
        if is_glob(&component.as_os_str().to_string_lossy()) {
            break;
        }
        literal.push(component);
    }
    (literal, true)
}

impl Tailer {
    pub fn new(
        apps: Vec<AppLogs>,
        config: LogsConfig,
        resume: Vec<FileOffset>,
        stopped_at: Option<SystemTime>,
        first_run: bool,
        events: SyncSender<Event>,
    ) -> Self {
        Tailer {
            apps,
            config,
            files: HashMap::new(),
            resume,
            stopped_at,
            first_run,
            events,
            unreadable: HashSet::new(),
            warned_max_files: false,
            buffer: vec![0; CHUNK],
            discovered: 0,
        }
    }

    /// Runs until `stop` is cancelled (then drains) or the batcher is gone.
    pub fn run(mut self, stop: CancellationToken) {
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<Wake>();
        let mut watcher = None;
        let mut watched: HashSet<PathBuf> = HashSet::new();
        if self.config.watch == WatchMode::Notify {
            let tx = wake_tx.clone();
            let created =
                notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
                    let wake = match result {
                        Ok(event) if event.need_rescan() => Wake::Rescan,
                        Ok(event) => match event.kind {
                            notify::EventKind::Access(_) => return,
                            notify::EventKind::Modify(notify::event::ModifyKind::Data(_)) => {
                                Wake::Data
                            }
                            _ => Wake::Rescan,
                        },
                        Err(_) => Wake::Rescan,
                    };
                    let _ = tx.send(wake);
                });
            match created {
                Ok(w) => watcher = Some(w),
                Err(error) => tracing::warn!(%error, "cannot start inotify; polling instead"),
            }
        }
        let poll = if watcher.is_some() {
            Duration::from_millis(self.config.rescan_interval_ms)
        } else {
            Duration::from_millis(self.config.poll_interval_ms)
        };
        let timers = Duration::from_millis(self.config.partial_line_timeout_ms.clamp(50, 1000));
        let mut last_scan = Instant::now();
        let mut initial = true;
        let mut rescan = true;
        while !stop.is_cancelled() {
            if rescan {
                if let Some(watcher) = watcher.as_mut() {
                    self.ensure_watches(watcher, &mut watched);
                }
                if initial && !self.recover_rotated() {
                    return;
                }
                if !self.scan(initial) {
                    return;
                }
                if initial && !self.forget_unused() {
                    return;
                }
                initial = false;
                last_scan = Instant::now();
            }
            let more = match self.read_all() {
                Some(more) => more,
                None => return,
            };
            if !self.flush_timed_out() {
                return;
            }
            if !self.release_finished() {
                return;
            }
            rescan = false;
            if more {
                continue;
            }
            let wait = poll.saturating_sub(last_scan.elapsed()).min(timers);
            match wake_rx.recv_timeout(wait) {
                Ok(wake) => {
                    rescan = matches!(wake, Wake::Rescan);
                    while let Ok(wake) = wake_rx.try_recv() {
                        rescan |= matches!(wake, Wake::Rescan);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {}
            }
            rescan |= last_scan.elapsed() >= poll;
        }
        drop(watcher);
        self.drain();
    }

    /// On stop: reads every tracked file (and any new one) to its current
    /// end, within [`STOP_DRAIN`], so lines written before the stop are
    /// spooled now. Partial lines and held multiline records stay unread:
    /// the checkpoint points before them and the restart reads them whole.
    fn drain(&mut self) {
        let deadline = Instant::now() + STOP_DRAIN;
        if !self.scan(false) {
            return;
        }
        while Instant::now() < deadline {
            match self.read_all() {
                Some(true) => continue,
                _ => break,
            }
        }
    }

    fn ensure_watches(
        &self,
        watcher: &mut notify::RecommendedWatcher,
        watched: &mut HashSet<PathBuf>,
    ) {
        use notify::Watcher;
        for pattern in self.apps.iter().flat_map(|a| a.patterns.iter()) {
            let (dir, recursive) = watch_target(pattern);
            if watched.contains(&dir) || !dir.is_dir() {
                continue;
            }
            let mode = if recursive {
                notify::RecursiveMode::Recursive
            } else {
                notify::RecursiveMode::NonRecursive
            };
            match watcher.watch(&dir, mode) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(error) => {
                    tracing::warn!(%error, dir = %dir.display(), "cannot watch directory; the periodic re-scan covers it")
                }
            }
        }
    }

    /// The files the globs match now: (application, path, metadata), each
    /// file once. Reports patterns and files it cannot read.
    fn matches(&mut self) -> Vec<(usize, PathBuf, Metadata)> {
        let mut found = Vec::new();
        let mut ids = HashSet::new();
        for app_index in 0..self.apps.len() {
            for pattern_index in 0..self.apps[app_index].patterns.len() {
                let pattern = self.apps[app_index].patterns[pattern_index].clone();
                let paths = match glob::glob(&pattern) {
                    Ok(paths) => paths,
                    Err(error) => {
                        if self.unreadable.insert(PathBuf::from(&pattern)) {
                            tracing::error!(%pattern, %error, "invalid log path pattern");
                        }
                        continue;
                    }
                };
                let follow = self.apps[app_index].follow_symlinks;
                for path in paths.flatten() {
                    let stat = if follow {
                        std::fs::metadata(&path)
                    } else {
                        std::fs::symlink_metadata(&path)
                    };
                    let metadata = match stat {
                        Ok(metadata) if metadata.file_type().is_symlink() => {
                            if self.unreadable.insert(path.clone()) {
                                tracing::error!(path = %path.display(), "cannot read log file: it is a symbolic link, not followed (set follow_symlinks = true for this application to follow it)");
                            }
                            continue;
                        }
                        Ok(metadata) => metadata,
                        Err(error) => {
                            // A dangling link or a file we may not stat.
                            if self.unreadable.insert(path.clone()) {
                                tracing::error!(path = %path.display(), %error, "cannot read log file; will retry");
                            }
                            continue;
                        }
                    };
                    if metadata.is_file() && ids.insert((metadata.dev(), metadata.ino())) {
                        found.push((app_index, path, metadata));
                    }
                }
            }
        }
        found
    }

    /// Finds files matching the globs; starts tracking new ones, oldest
    /// (least recently written) first, so that reading order is rotation
    /// order, never name order.
    fn scan(&mut self, initial: bool) -> bool {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut new = Vec::new();
        for (app, path, metadata) in self.matches() {
            let id = (metadata.dev(), metadata.ino());
            seen.insert(id);
            if let Some(tracked) = self.files.get_mut(&id) {
                tracked.missing_since = None;
                if tracked.path != path {
                    tracked.path = path;
                }
                continue;
            }
            new.push((app, path, metadata));
        }
        new.sort_by_key(rotation_order);
        for (app, path, metadata) in new {
            if !self.track(app, &path, &metadata, initial) {
                return false;
            }
        }
        let now = Instant::now();
        for (id, tracked) in self.files.iter_mut() {
            if !seen.contains(id) {
                tracked.missing_since.get_or_insert(now);
            }
        }
        true
    }

    /// The application a checkpoint entry belongs to: by name, or (older
    /// checkpoints) by the patterns that match its path.
    fn app_of(&self, entry: &FileOffset) -> Option<usize> {
        if let Some(index) = self.apps.iter().position(|a| a.name == entry.application) {
            return Some(index);
        }
        self.apps.iter().position(|a| {
            a.patterns.iter().any(|p| {
                glob::Pattern::new(p).is_ok_and(|p| p.matches_path(Path::new(&entry.path)))
            })
        })
    }

    /// Every regular file (links not followed) in the directories of the
    /// patterns and of the checkpoint's entries, by device and inode.
    fn files_nearby(&self) -> HashMap<(u64, u64), (PathBuf, Metadata)> {
        let mut dirs: BTreeSet<PathBuf> = self
            .apps
            .iter()
            .flat_map(|a| a.patterns.iter())
            .map(|p| watch_target(p).0)
            .collect();
        dirs.extend(
            self.resume
                .iter()
                .filter_map(|e| Some(Path::new(&e.path).parent()?.to_owned())),
        );
        let mut files = HashMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else {
                    continue;
                };
                if metadata.is_file() {
                    files.insert((metadata.dev(), metadata.ino()), (entry.path(), metadata));
                }
            }
        }
        files
    }

    /// After a restart, before the first scan: tracks the files the globs
    /// no longer name but that hold unread lines, oldest first, so they are
    /// read to their end before the current files. These are (1) files of
    /// checkpoint entries with unread bytes, found by identity whatever
    /// their name now (rotated while the agent was down, or just before it
    /// stopped), and (2) rotated siblings of the applications' files
    /// (`app.log.1`, `app.log-20261128`, not compressed) written to after
    /// the agent stopped, which it never saw.
    fn recover_rotated(&mut self) -> bool {
        if self.resume.is_empty() && self.stopped_at.is_none() {
            return true;
        }
        let nearby = self.files_nearby();
        let matched = self.matches();
        let globbed: HashSet<(u64, u64)> =
            matched.iter().map(|(_, _, m)| (m.dev(), m.ino())).collect();
        let entries: HashSet<(u64, u64)> = self
            .resume
            .iter()
            .map(|e| (e.key.device, e.key.inode))
            .collect();
        let mut found: Vec<(usize, PathBuf, Metadata)> = Vec::new();
        for entry in &self.resume {
            let id = (entry.key.device, entry.key.inode);
            let Some((path, metadata)) = nearby.get(&id) else {
                continue;
            };
            if globbed.contains(&id)
                || metadata.len() <= entry.offset
                || identify(entry, path, metadata) != Some(Resume::At(entry.offset))
            {
                continue;
            }
            match self.app_of(entry) {
                Some(app) => found.push((app, path.clone(), metadata.clone())),
                None => {
                    tracing::warn!(path = %path.display(), "a rotated log file with unread lines belongs to no configured application; not read")
                }
            }
        }
        if let Some(stopped_at) = self.stopped_at {
            // Base names: the applications' current files and the
            // checkpoint's, each with its application.
            let mut bases: Vec<(usize, PathBuf)> = matched
                .iter()
                .map(|(app, path, _)| (*app, path.clone()))
                .collect();
            bases.extend(
                self.resume
                    .iter()
                    .filter_map(|e| Some((self.app_of(e)?, PathBuf::from(&e.path)))),
            );
            for (id, (path, metadata)) in &nearby {
                if globbed.contains(id)
                    || entries.contains(id)
                    || metadata.modified().map_or(true, |m| m <= stopped_at)
                    || is_compressed(path)
                {
                    continue;
                }
                if let Some((app, _)) = bases.iter().find(|(_, base)| is_rotation_of(path, base)) {
                    tracing::info!(path = %path.display(), "a log file rotated while the agent was stopped; reading it whole");
                    found.push((*app, path.clone(), metadata.clone()));
                }
            }
        }
        found.sort_by_key(rotation_order);
        for (app, path, metadata) in found {
            if !self.track(app, &path, &metadata, true) {
                return false;
            }
        }
        true
    }

    /// After the first scan: checkpoint entries no file took up leave the
    /// checkpoint (a release each). A file that is gone (deleted, or
    /// compressed, while the agent was down) with lines it had not read is
    /// reported with what is known lost.
    fn forget_unused(&mut self) -> bool {
        if self.resume.is_empty() {
            return true;
        }
        let nearby = self.files_nearby();
        for entry in std::mem::take(&mut self.resume) {
            let id = (entry.key.device, entry.key.inode);
            let same = match nearby.get(&id) {
                Some((path, metadata)) => {
                    identify(&entry, path, metadata) == Some(Resume::At(entry.offset))
                }
                None => false,
            };
            if !same && !self.files.contains_key(&id) {
                report_lost(
                    &entry,
                    "it was removed or compressed while the agent was not reading it",
                );
            }
            if self
                .events
                .send(Event::Released { key: entry.key })
                .is_err()
            {
                return false;
            }
        }
        true
    }

    fn track(
        &mut self,
        app: usize,
        path: &Path,
        metadata: &std::fs::Metadata,
        initial: bool,
    ) -> bool {
        if self.files.len() >= self.config.max_files {
            if !self.warned_max_files {
                tracing::warn!(
                    max = self.config.max_files,
                    "logs.max_files reached; further files are not watched"
                );
                self.warned_max_files = true;
            }
            return true;
        }
        let file = match open_log(path, self.apps[app].follow_symlinks) {
            Ok(file) => {
                self.unreadable.remove(path);
                file
            }
            Err(error) => {
                if self.unreadable.insert(path.to_owned()) {
                    tracing::error!(path = %path.display(), %error, "cannot read log file; will retry");
                }
                return true;
            }
        };
        let mut prefix = vec![0u8; FINGERPRINT_BYTES];
        let got = read_full_at(&file, &mut prefix, 0);
        prefix.truncate(got);
        let (device, inode) = (metadata.dev(), metadata.ino());
        let born = born_ns(metadata);
        let len = metadata.len();
        let resumed = self
            .resume
            .iter()
            .position(|r| r.key.device == device && r.key.inode == inode)
            .map(|i| self.resume.swap_remove(i));
        let mut key = FileKey {
            device,
            inode,
            fingerprint: crc32fast::hash(&prefix),
            fingerprint_len: prefix.len() as u32,
            born_ns: born,
            generation: rand::random(),
        };
        let start = match resumed {
            Some(entry) => {
                let before = read_before(&file, entry.offset);
                match entry.resume_at(len, &prefix, born, &before) {
                    // Keep the key the checkpoint knew, so positions stay
                    // comparable.
                    Resume::At(offset) => {
                        key = entry.key;
                        offset
                    }
                    Resume::FromStart(why) => {
                        tracing::info!(path = %path.display(), reason = why, "not the file the checkpoint knew on this inode; reading it from its start");
                        report_lost(&entry, why);
                        if self
                            .events
                            .send(Event::Released { key: entry.key })
                            .is_err()
                        {
                            return false;
                        }
                        0
                    }
                }
            }
            None if initial && self.first_run && self.config.start_at == StartAt::End => len,
            None => 0,
        };
        tracing::info!(path = %path.display(), offset = start, application = %self.apps[app].name, "watching log file");
        if self
            .events
            .send(Event::FilePath {
                key,
                path: path.display().to_string(),
                application: self.apps[app].name.clone(),
            })
            .is_err()
        {
            return false;
        }
        self.files.insert(
            (device, inode),
            Tracked {
                key,
                path: path.to_owned(),
                app,
                file,
                lines: LineAssembler::new(
                    &self.apps[app].name,
                    self.apps[app].multiline,
                    self.config.max_line_bytes,
                    start,
                ),
                size: len,
                last_growth: Instant::now(),
                missing_since: None,
                discovered: self.discovered,
            },
        );
        self.discovered += 1;
        true
    }

    /// Hands lines to the batcher with the position after them in
    /// `source` (the tracked file, or its copy after a copytruncate).
    /// `None` when the batcher is gone.
    fn send_lines(
        &self,
        items: Vec<Item>,
        tracked: &Tracked,
        source: &File,
        offset: u64,
    ) -> Option<()> {
        if items.is_empty() {
            return Some(());
        }
        self.events
            .send(Event::Lines {
                items,
                key: tracked.key,
                position: position(source, offset, tracked.size.max(offset)),
            })
            .ok()
    }

    /// Identifies `tracked` by its current first bytes and tells the
    /// batcher the new key. `None` when the batcher is gone.
    fn reidentify(&self, tracked: &mut Tracked) -> Option<()> {
        let mut prefix = vec![0u8; FINGERPRINT_BYTES];
        let got = read_full_at(&tracked.file, &mut prefix, 0);
        tracked.key.fingerprint = crc32fast::hash(&prefix[..got]);
        tracked.key.fingerprint_len = got as u32;
        self.events
            .send(Event::FilePath {
                key: tracked.key,
                path: tracked.path.display().to_string(),
                application: self.apps[tracked.app].name.clone(),
            })
            .ok()
    }

    /// Reads new data from every tracked file. `Some(true)` when a file had
    /// more than its budget; `None` when the batcher is gone.
    fn read_all(&mut self) -> Option<bool> {
        let mut more = false;
        let mut ids: Vec<(u64, u64, u64)> = self
            .files
            .iter()
            .map(|(id, t)| (t.discovered, id.0, id.1))
            .collect();
        ids.sort_unstable();
        // Lengths are taken newest file first, then read oldest first, each
        // up to its length: an older file's length is taken after a newer
        // one's, so it covers every line written before anything the newer
        // one's covers. A rotated file's last lines thus always go out
        // before the new file's first, however the writes interleave.
        let lengths: Vec<Option<u64>> = ids
            .iter()
            .rev()
            .map(|(_, device, inode)| {
                let tracked = self.files.get(&(*device, *inode))?;
                tracked.file.metadata().ok().map(|m| m.len())
            })
            .collect();
        for ((_, device, inode), len) in ids.into_iter().zip(lengths.into_iter().rev()) {
            let id = (device, inode);
            let Some(len) = len else { continue };
            let Some(mut tracked) = self.files.remove(&id) else {
                continue;
            };
            let result = self.read_file(&mut tracked, len);
            self.files.insert(id, tracked);
            more |= result?;
        }
        Some(more)
    }

    /// Reads `tracked` up to `len` (its length when the pass began).
    fn read_file(&mut self, tracked: &mut Tracked, len: u64) -> Option<bool> {
        let read_pos = tracked.lines.read_pos();
        if len < read_pos || (len != read_pos && self.rewritten(tracked)) {
            tracing::info!(path = %tracked.path.display(), "log file truncated (copytruncate?); reading from the start");
            self.recover_from_copy(tracked)?;
            self.flush(tracked, true, None)?;
            tracked.lines.restart();
            // New content, new identity: the checkpoint must not match the
            // old fingerprint against it after a restart.
            self.reidentify(tracked)?;
        }
        if (tracked.key.fingerprint_len as usize) < FINGERPRINT_BYTES
            && len > u64::from(tracked.key.fingerprint_len)
        {
            // The file was short when first seen: identify it by more bytes
            // now, so inode reuse and copytruncate copies are recognised.
            // (`rewritten` above already ruled out a changed prefix.)
            self.reidentify(tracked)?;
        }
        tracked.size = len;
        self.read_from(tracked, None, len, READ_BUDGET)?;
        Some(tracked.lines.read_pos() < len)
    }

    /// The one read loop: reads the tracked file (or `copy`, its copy)
    /// from the assembler's position up to `len`, at most `budget` bytes,
    /// and hands the records to the batcher. `None` when the batcher is
    /// gone.
    fn read_from(
        &mut self,
        tracked: &mut Tracked,
        copy: Option<&File>,
        len: u64,
        mut budget: usize,
    ) -> Option<()> {
        while tracked.lines.read_pos() < len && budget > 0 {
            let at = tracked.lines.read_pos();
            let want = CHUNK.min((len - at) as usize);
            let source = copy.unwrap_or(&tracked.file);
            let n = match source.read_at(&mut self.buffer[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) => {
                    if self.unreadable.insert(tracked.path.clone()) {
                        tracing::error!(path = %tracked.path.display(), %error, "cannot read log file");
                    }
                    break;
                }
            };
            budget = budget.saturating_sub(n);
            tracked.last_growth = Instant::now();
            let records = tracked
                .lines
                .feed(&self.buffer[..n], Instant::now(), now_millis());
            self.send_records(records, tracked, copy)?;
        }
        Some(())
    }

    /// Hands records to the batcher with the committed position in the
    /// tracked file (or `copy`). `None` when the batcher is gone.
    fn send_records(
        &self,
        records: Vec<LogRecord>,
        tracked: &Tracked,
        copy: Option<&File>,
    ) -> Option<()> {
        let items = records.into_iter().map(Item::Log).collect();
        let source = copy.unwrap_or(&tracked.file);
        self.send_lines(items, tracked, source, tracked.lines.committed())
    }

    /// Sends what the assembler held too long (or all of it, `force`).
    fn flush(&self, tracked: &mut Tracked, force: bool, copy: Option<&File>) -> Option<()> {
        let timeout = Duration::from_millis(self.config.partial_line_timeout_ms);
        let records = tracked
            .lines
            .flush(Instant::now(), timeout, force, now_millis());
        self.send_records(records, tracked, copy)
    }

    /// After a copytruncate, the lines written between our last read and
    /// the truncation are only in the copy: find it (a file in the same
    /// directory, at least as long as what we read, with our fingerprint)
    /// and read the rest from it. `None` when the batcher is gone.
    fn recover_from_copy(&mut self, tracked: &mut Tracked) -> Option<()> {
        let fingerprint_len = tracked.key.fingerprint_len as usize;
        let Some(dir) = tracked.path.parent() else {
            return Some(());
        };
        if fingerprint_len == 0 {
            return Some(());
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Some(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if path == tracked.path
                || !metadata.is_file()
                || metadata.len() <= tracked.lines.read_pos()
                || self.files.contains_key(&(metadata.dev(), metadata.ino()))
            {
                continue;
            }
            let Ok(copy) = open_log(&path, false) else {
                continue;
            };
            let mut prefix = vec![0u8; fingerprint_len];
            if read_full_at(&copy, &mut prefix, 0) < fingerprint_len
                || crc32fast::hash(&prefix) != tracked.key.fingerprint
            {
                continue;
            }
            tracing::info!(copy = %path.display(), from = tracked.lines.read_pos(), "reading the end of the truncated file from its copy");
            self.read_from(tracked, Some(&copy), metadata.len(), usize::MAX)?;
            // A last line without newline in the copy is complete now.
            self.flush(tracked, true, Some(&copy))?;
            break;
        }
        Some(())
    }

    /// Whether the file's first bytes changed (rewritten in place).
    fn rewritten(&self, tracked: &Tracked) -> bool {
        let len = tracked.key.fingerprint_len as usize;
        if len == 0 {
            return false;
        }
        let mut prefix = vec![0u8; len];
        let got = read_full_at(&tracked.file, &mut prefix, 0);
        got < len || crc32fast::hash(&prefix) != tracked.key.fingerprint
    }

    /// Sends partial lines and multiline records that waited too long.
    /// `false` when the batcher is gone.
    fn flush_timed_out(&mut self) -> bool {
        let ids: Vec<(u64, u64)> = self.files.keys().copied().collect();
        for id in ids {
            let Some(mut tracked) = self.files.remove(&id) else {
                continue;
            };
            let sent = self.flush(&mut tracked, false, None);
            self.files.insert(id, tracked);
            if sent.is_none() {
                return false;
            }
        }
        true
    }

    /// Closes files that left the globs (or were deleted) and are quiet,
    /// and tells the batcher, so their checkpoint entries leave once acked.
    /// `false` when the batcher is gone.
    fn release_finished(&mut self) -> bool {
        let now = Instant::now();
        let mut released = Vec::new();
        self.files.retain(|_, tracked| {
            let deleted = tracked.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
            let gone_since = match (tracked.missing_since, deleted) {
                (Some(since), _) => Some(since),
                (None, true) => Some(tracked.last_growth),
                (None, false) => None,
            };
            let Some(since) = gone_since else { return true };
            let quiet = now.duration_since(tracked.last_growth.max(since)) >= RELEASE_AFTER;
            let at_end = tracked.lines.is_idle();
            if quiet && at_end {
                tracing::info!(path = %tracked.path.display(), "released log file (rotated or deleted, read to its end)");
                released.push(tracked.key);
                false
            } else {
                true
            }
        });
        released
            .into_iter()
            .all(|key| self.events.send(Event::Released { key }).is_ok())
    }
}

/// The order files of one application were written in: least recently
/// written first, and empty files last. An application goes on writing to
/// a renamed file until it reopens its log, so a new, still empty file can
/// be older than the last write to the one it replaces; its lines will
/// come after.
fn rotation_order(
    (_, path, metadata): &(usize, PathBuf, Metadata),
) -> (bool, Option<SystemTime>, PathBuf) {
    (metadata.len() == 0, metadata.modified().ok(), path.clone())
}

/// Reads as much of `buf` as the file has at `at`; returns how many bytes.
fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// The up to [`GUARD_BYTES`] bytes just before `offset`.
fn read_before(file: &File, offset: u64) -> Vec<u8> {
    let start = offset.saturating_sub(GUARD_BYTES as u64);
    let mut before = vec![0u8; (offset - start) as usize];
    let got = read_full_at(file, &mut before, start);
    before.truncate(got);
    before
}

/// A position with its guard (the CRC of the bytes before it).
fn position(file: &File, offset: u64, size: u64) -> Position {
    let before = read_before(file, offset);
    Position {
        offset,
        guard: crc32fast::hash(&before),
        guard_len: before.len() as u32,
        size,
    }
}

/// Birth time in nanoseconds since the epoch, where the filesystem
/// records one (statx).
fn born_ns(metadata: &Metadata) -> Option<u64> {
    let born = metadata.created().ok()?;
    let since = born.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

/// Opens a log file; without `follow`, a path that is (or became, since
/// it was looked at) a symbolic link fails (`O_NOFOLLOW`).
fn open_log(path: &Path, follow: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if !follow {
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    options.open(path)
}

/// Whether the file at `path` is the one `entry` knew, and where to
/// resume it. `None` if it cannot be read.
fn identify(entry: &FileOffset, path: &Path, metadata: &Metadata) -> Option<Resume> {
    let file = open_log(path, false).ok()?;
    let mut prefix = vec![0u8; FINGERPRINT_BYTES];
    let got = read_full_at(&file, &mut prefix, 0);
    prefix.truncate(got);
    let before = read_before(&file, entry.offset);
    Some(entry.resume_at(metadata.len(), &prefix, born_ns(metadata), &before))
}

/// Reports a checkpointed file that is gone: what it had not read is
/// lost, and what is known of it.
fn report_lost(entry: &FileOffset, why: &str) {
    let compressed = compressed_copy(Path::new(&entry.path));
    tracing::warn!(
        path = %entry.path,
        read_up_to = entry.offset,
        known_unread_bytes = entry.size.saturating_sub(entry.offset),
        compressed_copy = %compressed.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        reason = why,
        "the file the checkpoint knew is gone; lines written to it after the saved position are lost (compressed files are not read)"
    );
}

fn is_compressed(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    COMPRESSED.iter().any(|suffix| name.ends_with(suffix))
}

/// Whether `path` is a rotated sibling of `base`: in the same directory,
/// named `base.…` or `base-…` (`app.log.1`, `app.log-20261128`).
fn is_rotation_of(path: &Path, base: &Path) -> bool {
    if path.parent() != base.parent() || path == base {
        return false;
    }
    let (Some(name), Some(base)) = (path.file_name(), base.file_name()) else {
        return false;
    };
    let (name, base) = (name.to_string_lossy(), base.to_string_lossy());
    name.strip_prefix(base.as_ref())
        .is_some_and(|rest| rest.starts_with(['.', '-']))
}

/// A compressed rotated copy of `path` in its directory, if there is one.
fn compressed_copy(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| is_compressed(p) && is_rotation_of(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_targets() {
        assert_eq!(
            watch_target("/var/log/app/*.log"),
            (PathBuf::from("/var/log/app"), false)
        );
        assert_eq!(
            watch_target("/var/log/app.log"),
            (PathBuf::from("/var/log"), false)
        );
        assert_eq!(
            watch_target("/srv/*/logs/x.log"),
            (PathBuf::from("/srv"), true)
        );
    }
}
