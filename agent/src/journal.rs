//! journald as a log source: the entries of an application's systemd units
//! (or syslog identifiers) become its `log` items.
//!
//! Read the way Vector's `journald` source does: a `journalctl --follow
//! --output=json` child per application, started after the last
//! acknowledged cursor, restarted with backoff if it exits. Why a child and
//! not libsystemd's sd-journal API: no C library to link (the agent stays
//! one static-ish binary that starts on hosts without libsystemd), the
//! journal's file format and its locking stay journalctl's business, and a
//! crash in the reader cannot take the agent down. The cost is JSON
//! parsing, measured in BENCHMARKS.md.
//!
//! - An entry is `MESSAGE` (binary messages, sent by journalctl as byte
//!   arrays, decoded lossily; multi-line messages kept whole), the level
//!   from `PRIORITY` (0–2 CRITICAL, 3 ERROR, 4 WARNING, 5–6 INFO, 7 DEBUG),
//!   the time from `__REALTIME_TIMESTAMP` (when it was logged, not read).
//! - The cursor after each batch of entries travels with the batch through
//!   the spool; the checkpoint keeps it only once the relay acknowledged
//!   the batch, so a restart or crash loses and repeats nothing.
//! - With no saved cursor, reading starts at the journal's end
//!   (`logs.start_at = "end"`) or its beginning.
//! - If the host has no journal (no journalctl, no journal directory) the
//!   agent says so once per application and retries quietly.

use parking_lot::Mutex;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use o1_common::Level;
use o1_common::wire::{Item, LogRecord};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{JournalConfig, StartAt, parse_priority};
use crate::pipeline::Event;

/// Most entries, and bytes of messages, in one event to the batcher (the
/// event queue holds 256 events: this bounds what it can hold).
const ENTRIES_PER_EVENT: usize = 512;
const BYTES_PER_EVENT: usize = 256 * 1024;
/// Longest line of journalctl's output read into memory; a longer entry
/// is skipped and reported (its message would be cut to
/// `logs.max_line_bytes` anyway, but its JSON cannot be parsed in part).
const MAX_ENTRY_BYTES: usize = 8 * 1024 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const LONGEST_BACKOFF: Duration = Duration::from_secs(30);

/// What to read for one application.
#[derive(Debug, Clone)]
pub struct JournalSource {
    pub application: String,
    /// Unit names, with `.service` added where no suffix was given.
    pub units: Vec<String>,
    pub identifiers: Vec<String>,
    /// Least important priority shipped (0–7).
    pub min_priority: u8,
    pub directory: Option<PathBuf>,
    pub max_message_bytes: usize,
}

impl JournalSource {
    pub fn new(application: &str, config: &JournalConfig, max_message_bytes: usize) -> Self {
        JournalSource {
            application: application.to_owned(),
            units: config
                .units
                .iter()
                .map(|u| {
                    if u.contains('.') {
                        u.clone()
                    } else {
                        format!("{u}.service")
                    }
                })
                .collect(),
            identifiers: config.identifiers.clone(),
            min_priority: parse_priority(&config.min_priority).unwrap_or(6),
            directory: config.directory.clone(),
            max_message_bytes,
        }
    }

    /// journalctl's arguments. Units alone or identifiers alone are
    /// filtered by journalctl; both together are ORed here instead
    /// (journalctl would AND them).
    pub fn arguments(&self, cursor: Option<&str>, start_at: StartAt) -> Vec<String> {
        let mut args = vec![
            "--follow".to_owned(),
            "--output=json".to_owned(),
            // Fields over 4 KiB would otherwise be null.
            "--all".to_owned(),
            "--no-pager".to_owned(),
            "--quiet".to_owned(),
            format!("--priority={}", self.min_priority),
        ];
        if let Some(directory) = &self.directory {
            args.push(format!("--directory={}", directory.display()));
        }
        match cursor {
            // With --follow, journalctl shows only the last 10 entries
            // unless told otherwise.
            Some(cursor) => {
                args.push(format!("--after-cursor={cursor}"));
                args.push("--lines=all".to_owned());
            }
            None if start_at == StartAt::End => args.push("--lines=0".to_owned()),
            None => args.push("--lines=all".to_owned()),
        }
        if self.identifiers.is_empty() {
            args.extend(self.units.iter().map(|u| format!("--unit={u}")));
        } else if self.units.is_empty() {
            args.extend(self.identifiers.iter().map(|i| format!("--identifier={i}")));
        }
        args
    }

    /// Whether the journal this source reads exists on this host.
    fn available(&self) -> Result<(), Unavailable> {
        match &self.directory {
            Some(directory) if !directory.is_dir() => {
                Err(Unavailable::NoDirectory(directory.clone()))
            }
            Some(_) => Ok(()),
            None if Path::new("/run/log/journal").is_dir()
                || Path::new("/var/log/journal").is_dir() =>
            {
                Ok(())
            }
            None => Err(Unavailable::NoJournald),
        }
    }

    /// The log record for one line of journalctl's JSON output, or why
    /// there is none.
    pub fn record(&self, line: &[u8]) -> Result<(LogRecord, String), EntryError> {
        let mut entry: Entry = serde_json::from_slice(line).map_err(|_| EntryError::NotJson)?;
        let cursor = entry.cursor.take().ok_or(EntryError::NoCursor)?;
        let priority = entry
            .priority
            .as_deref()
            .and_then(|p| p.parse::<u8>().ok())
            .unwrap_or(6);
        if priority > self.min_priority || !self.matches(&entry) {
            return Err(EntryError::Filtered(cursor));
        }
        let message = match entry.message {
            Some(Value::String(text)) => text,
            Some(Value::Array(bytes)) => {
                let bytes: Vec<u8> = bytes
                    .iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            _ => String::new(),
        };
        let timestamp_ms = entry
            .realtime
            .as_deref()
            .and_then(|t| t.parse::<i64>().ok())
            .map_or_else(|| o1_common::Timestamp::now().unix_millis, |us| us / 1000);
        let record = LogRecord {
            application: self.application.clone(),
            timestamp_ms,
            level: level(priority),
            message: o1_common::text::cut(message, self.max_message_bytes),
            deployment_id: None,
        };
        Ok((record, cursor))
    }

    fn matches(&self, entry: &Entry) -> bool {
        let unit = |field: &Option<String>| {
            field
                .as_ref()
                .is_some_and(|u| self.units.iter().any(|w| w == u))
        };
        let by_unit = unit(&entry.systemd_unit)
            || unit(&entry.unit)
            || unit(&entry.object_unit)
            || unit(&entry.coredump_unit);
        let by_identifier = entry
            .identifier
            .as_ref()
            .is_some_and(|i| self.identifiers.iter().any(|w| w == i));
        by_unit || by_identifier
    }
}

/// journald priority → o1 level.
pub fn level(priority: u8) -> Level {
    match priority {
        0..=2 => Level::Critical,
        3 => Level::Error,
        4 => Level::Warning,
        5 | 6 => Level::Info,
        _ => Level::Debug,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum EntryError {
    NotJson,
    NoCursor,
    /// Not this application's, or less important than `min_priority`: its
    /// cursor still moves the position.
    Filtered(String),
}

/// The fields of a journal entry that o1 uses.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<String>,
    #[serde(rename = "MESSAGE")]
    message: Option<Value>,
    #[serde(rename = "PRIORITY")]
    priority: Option<String>,
    #[serde(rename = "_SYSTEMD_UNIT")]
    systemd_unit: Option<String>,
    /// systemd's own messages about a unit ("Started …").
    #[serde(rename = "UNIT")]
    unit: Option<String>,
    #[serde(rename = "OBJECT_SYSTEMD_UNIT")]
    object_unit: Option<String>,
    #[serde(rename = "COREDUMP_UNIT")]
    coredump_unit: Option<String>,
    #[serde(rename = "SYSLOG_IDENTIFIER")]
    identifier: Option<String>,
}

/// Why a journal cannot be read here.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    #[error("the journal directory {} does not exist", .0.display())]
    NoDirectory(PathBuf),
    #[error("no /run/log/journal or /var/log/journal: journald is not running here")]
    NoJournald,
}

/// How a reader is stopped: the agent's shutdown token, and the running
/// journalctl, ended when the token is cancelled (its output is what the
/// reader's thread is blocked on).
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: CancellationToken,
    child: Arc<Mutex<Option<Child>>>,
}

impl StopHandle {
    /// Stops with `stop`; must be made within the runtime (a task ends
    /// journalctl on cancellation).
    pub fn new(stop: CancellationToken) -> Self {
        let handle = StopHandle {
            stop,
            child: Arc::default(),
        };
        let on_stop = handle.clone();
        tokio::spawn(async move {
            on_stop.stop.cancelled().await;
            if let Some(child) = on_stop.child.lock().as_mut() {
                let _ = child.kill();
            }
        });
        handle
    }

    fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// Follows the journal for one application until stopped or the batcher
/// is gone.
#[derive(Debug)]
pub struct JournalReader {
    pub source: JournalSource,
    /// Where to continue: the cursor after the last entry handed on.
    pub cursor: Option<String>,
    pub start_at: StartAt,
    pub events: SyncSender<Event>,
    pub handle: StopHandle,
}

impl JournalReader {
    pub fn run(mut self) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, LONGEST_BACKOFF);
        let mut said = String::new();
        let app = self.source.application.clone();
        while !self.handle.stopped() {
            if let Err(why) = self.source.available() {
                let why = why.to_string();
                if said != why {
                    tracing::warn!(application = %app, reason = %why, "journald is not available; this application's journal is not read (retrying quietly)");
                    said = why;
                }
                self.sleep(backoff.wait());
                continue;
            }
            let started = Instant::now();
            match self.follow() {
                Ok(Exit::Stopped) => return,
                Ok(Exit::BatcherGone) => return,
                Ok(Exit::Ended(stderr)) => {
                    let why = stderr.trim().to_owned();
                    if !why.is_empty() && why != said {
                        tracing::warn!(application = %app, journalctl = %why, "journalctl ended; restarting it");
                        said = why.clone();
                    }
                    if why.contains("cursor") && self.cursor.is_some() {
                        tracing::warn!(application = %app, "the saved journal cursor is not usable; starting over as logs.start_at says");
                        self.cursor = None;
                    }
                }
                Err(error) => {
                    let why = format!("cannot run journalctl: {error}");
                    if said != why {
                        tracing::warn!(application = %app, reason = %why, "journald is not available; this application's journal is not read (retrying quietly)");
                        said = why;
                    }
                }
            }
            if started.elapsed() > LONGEST_BACKOFF {
                backoff.reset();
            }
            self.sleep(backoff.wait());
        }
    }

    fn sleep(&self, delay: Duration) {
        let until = Instant::now() + delay;
        while !self.handle.stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50).min(delay));
        }
    }

    /// Runs one journalctl to its end.
    fn follow(&mut self) -> std::io::Result<Exit> {
        let args = self.source.arguments(self.cursor.as_deref(), self.start_at);
        let mut child = Command::new("journalctl")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        *self.handle.child.lock() = Some(child);
        if self.handle.stopped() {
            self.end_child();
            return Ok(Exit::Stopped);
        }
        tracing::info!(application = %self.source.application, cursor = self.cursor.as_deref().unwrap_or(""), "reading the journal");
        let exit = match stdout {
            Some(stdout) => self.read(BufReader::with_capacity(256 * 1024, stdout)),
            None => Exit::Ended(String::new()),
        };
        self.end_child();
        if let Exit::Ended(_) = exit {
            let mut text = String::new();
            if let Some(stderr) = stderr.as_mut() {
                let _ = stderr.take(64 * 1024).read_to_string(&mut text);
            }
            return Ok(if self.handle.stopped() {
                Exit::Stopped
            } else {
                Exit::Ended(text)
            });
        }
        Ok(exit)
    }

    fn end_child(&self) {
        let child = self.handle.child.lock().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Reads entries until journalctl's output ends.
    fn read<R: Read>(&mut self, mut reader: BufReader<R>) -> Exit {
        let mut line = Vec::new();
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut last_cursor: Option<String> = None;
        loop {
            match read_line_bounded(&mut reader, &mut line, MAX_ENTRY_BYTES) {
                Ok(Line::Whole) => {}
                Ok(Line::TooLong(skipped)) => {
                    tracing::warn!(application = %self.source.application, skipped_bytes = skipped, max = MAX_ENTRY_BYTES, "a journal entry longer than the agent reads was skipped");
                    continue;
                }
                Ok(Line::End) | Err(_) => {
                    if !self.send(&mut items, &mut last_cursor) {
                        return Exit::BatcherGone;
                    }
                    return Exit::Ended(String::new());
                }
            }
            match self.source.record(&line) {
                Ok((record, cursor)) => {
                    bytes += record.message.len();
                    items.push(Item::Log(record));
                    last_cursor = Some(cursor);
                }
                Err(EntryError::Filtered(cursor)) => last_cursor = Some(cursor),
                Err(EntryError::NotJson | EntryError::NoCursor) => {
                    tracing::debug!(application = %self.source.application, "journalctl printed a line that is not an entry");
                }
            }
            // Hand on what is here once nothing more is buffered (never
            // wait for more with entries in hand), or a full event's worth.
            if reader.buffer().is_empty()
                || items.len() >= ENTRIES_PER_EVENT
                || bytes >= BYTES_PER_EVENT
            {
                bytes = 0;
                if !self.send(&mut items, &mut last_cursor) {
                    return Exit::BatcherGone;
                }
            }
        }
    }

    /// Sends the entries read with the cursor after them. `false` when the
    /// batcher is gone.
    fn send(&mut self, items: &mut Vec<Item>, cursor: &mut Option<String>) -> bool {
        let Some(cursor) = cursor.take() else {
            return true;
        };
        self.cursor = Some(cursor.clone());
        if items.is_empty() {
            // Only filtered entries: nothing to ship; the position moves
            // with the next shipped entry.
            return true;
        }
        self.events
            .send(Event::Journal {
                items: std::mem::take(items),
                application: self.source.application.clone(),
                cursor,
            })
            .is_ok()
    }
}

/// What [`read_line_bounded`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line (with its newline, or the last one without).
    Whole,
    /// A line over the limit, read and thrown away: how many bytes.
    TooLong(usize),
    /// End of output.
    End,
}

/// Reads one line into `line`, holding at most `max` bytes of it.
fn read_line_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    line.clear();
    let n = reader.take(max as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if n < max || line.last() == Some(&b'\n') {
        return Ok(Line::Whole);
    }
    let mut skipped = n;
    loop {
        line.clear();
        let n = reader.take(64 * 1024).read_until(b'\n', line)?;
        skipped += n;
        if n == 0 || line.last() == Some(&b'\n') {
            line.clear();
            return Ok(Line::TooLong(skipped));
        }
    }
}

enum Exit {
    Stopped,
    BatcherGone,
    /// journalctl ended; what it printed on stderr.
    Ended(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(units: &[&str], identifiers: &[&str], min_priority: &str) -> JournalSource {
        JournalSource::new(
            "web",
            &JournalConfig {
                units: units.iter().map(|u| u.to_string()).collect(),
                identifiers: identifiers.iter().map(|u| u.to_string()).collect(),
                min_priority: min_priority.into(),
                directory: None,
            },
            100,
        )
    }

    #[test]
    fn lines_over_the_limit_are_skipped_whole_and_the_next_one_read() {
        let input = format!("short\n{}\nnext\nlast", "x".repeat(100));
        let mut reader = std::io::BufReader::with_capacity(8, input.as_bytes());
        let mut line = Vec::new();
        let mut read = || {
            read_line_bounded(&mut reader, &mut line, 16)
                .map(|l| (l, String::from_utf8_lossy(&line).into_owned()))
        };
        assert_eq!(read().unwrap(), (Line::Whole, "short\n".into()));
        assert_eq!(read().unwrap(), (Line::TooLong(101), String::new()));
        assert_eq!(read().unwrap(), (Line::Whole, "next\n".into()));
        assert_eq!(read().unwrap(), (Line::Whole, "last".into()));
        assert_eq!(read().unwrap(), (Line::End, String::new()));
    }

    #[test]
    fn priorities_map_to_levels() {
        let table = [
            (0, Level::Critical),
            (1, Level::Critical),
            (2, Level::Critical),
            (3, Level::Error),
            (4, Level::Warning),
            (5, Level::Info),
            (6, Level::Info),
            (7, Level::Debug),
        ];
        for (priority, expected) in table {
            assert_eq!(level(priority), expected, "priority {priority}");
        }
    }

    #[test]
    fn entries_become_records() {
        let web = source(&["web"], &["cron-web"], "info");
        // (JSON line, Ok((message, level, time ms)) or Err(filtered cursor))
        type Case<'a> = (&'a str, Result<(&'a str, Level, i64), &'a str>);
        let table: &[Case] = &[
            (
                r#"{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1700000000123456","MESSAGE":"hello","PRIORITY":"3","_SYSTEMD_UNIT":"web.service"}"#,
                Ok(("hello", Level::Error, 1_700_000_000_123)),
            ),
            (
                r#"{"__CURSOR":"c2","__REALTIME_TIMESTAMP":"1","MESSAGE":"two\nlines","PRIORITY":"4","SYSLOG_IDENTIFIER":"cron-web"}"#,
                Ok(("two\nlines", Level::Warning, 0)),
            ),
            (
                r#"{"__CURSOR":"c3","__REALTIME_TIMESTAMP":"1000","MESSAGE":[104,105,255],"PRIORITY":"6","UNIT":"web.service"}"#,
                Ok(("hi\u{fffd}", Level::Info, 1)),
            ),
            (
                r#"{"__CURSOR":"c4","MESSAGE":"debug","PRIORITY":"7","_SYSTEMD_UNIT":"web.service"}"#,
                Err("c4"),
            ),
            (
                r#"{"__CURSOR":"c5","MESSAGE":"other","PRIORITY":"3","_SYSTEMD_UNIT":"db.service"}"#,
                Err("c5"),
            ),
        ];
        for (line, expected) in table {
            let got = web.record(line.as_bytes());
            match (got, expected) {
                (Ok((record, _)), Ok((message, level, ms))) => {
                    assert_eq!(record.message, *message, "{line}");
                    assert_eq!(record.level, *level, "{line}");
                    assert_eq!(record.timestamp_ms, *ms, "{line}");
                    assert_eq!(record.application, "web");
                }
                (Err(EntryError::Filtered(cursor)), Err(c)) => assert_eq!(cursor, *c),
                (got, expected) => panic!("{line}: {got:?} vs {expected:?}"),
            }
        }
        assert_eq!(web.record(b"not json"), Err(EntryError::NotJson));
        assert_eq!(web.record(br#"{"MESSAGE":"x"}"#), Err(EntryError::NoCursor));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let web = source(&["web"], &[], "debug");
        let long = "é".repeat(200);
        let line = format!(
            r#"{{"__CURSOR":"c","MESSAGE":"{long}","PRIORITY":"6","_SYSTEMD_UNIT":"web.service"}}"#
        );
        let (record, _) = web.record(line.as_bytes()).unwrap();
        assert!(
            record.message.ends_with("…[truncated]"),
            "{}",
            record.message
        );
        assert!(record.message.len() <= 100 + "…[truncated]".len());
    }

    #[test]
    fn arguments_follow_the_cursor_and_filters() {
        let web = source(&["web"], &[], "warning");
        let args = web.arguments(Some("s=1;i=2"), StartAt::End);
        assert!(args.contains(&"--after-cursor=s=1;i=2".to_owned()));
        assert!(
            args.contains(&"--lines=all".to_owned()),
            "not the last 10 only"
        );
        assert!(args.contains(&"--unit=web.service".to_owned()));
        assert!(args.contains(&"--priority=4".to_owned()));
        assert!(
            web.arguments(None, StartAt::End)
                .contains(&"--lines=0".to_owned())
        );
        assert!(
            web.arguments(None, StartAt::Beginning)
                .contains(&"--lines=all".to_owned())
        );
        let both = source(&["web"], &["cron"], "info").arguments(None, StartAt::End);
        assert!(
            !both
                .iter()
                .any(|a| a.starts_with("--unit") || a.starts_with("--identifier")),
            "units and identifiers together are filtered by the agent: {both:?}"
        );
    }
}
