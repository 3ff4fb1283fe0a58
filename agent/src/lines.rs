//! Line assembly of one log file, without I/O: bytes in (as read, in any
//! chunks), log records out, with the file position after the last record
//! handed out (what the checkpoint may move to once it is acked).
//!
//! - A line ends at `\n`; a trailing `\r` is dropped; invalid UTF-8 is
//!   replaced; the level is detected from the text.
//! - A line longer than `max_line_bytes` is cut there and marked
//!   `…[truncated]`; the rest of it, up to its newline, is skipped.
//! - A last line without newline is held until `partial_line_timeout`,
//!   then sent as it is.
//! - With `multiline = "indented"`, lines starting with a space or tab
//!   join the record before them (stack traces); a record is held until
//!   the next one starts, or for `partial_line_timeout`.

use std::time::{Duration, Instant};

use o1_common::text::TRUNCATED_MARK;
use o1_common::wire::LogRecord;

use crate::config::Multiline;
use crate::level::detect_level;

/// The line state of one file.
#[derive(Debug)]
pub struct LineAssembler {
    application: String,
    multiline: Multiline,
    max_line_bytes: usize,
    /// Position after the last byte fed.
    read_pos: u64,
    /// Position after the last record handed out.
    committed: u64,
    /// The current line's bytes, not yet complete, and since when.
    partial: Vec<u8>,
    partial_since: Option<Instant>,
    /// The current line was cut: skip to its newline.
    cutting: bool,
    /// A multiline record being assembled, the position after it, and
    /// since when.
    pending: Option<(LogRecord, u64, Instant)>,
}

impl LineAssembler {
    /// Assembles lines of `application` from position `start`.
    pub fn new(application: &str, multiline: Multiline, max_line_bytes: usize, start: u64) -> Self {
        LineAssembler {
            application: application.to_owned(),
            multiline,
            max_line_bytes,
            read_pos: start,
            committed: start,
            partial: Vec::new(),
            partial_since: None,
            cutting: false,
            pending: None,
        }
    }

    /// Position after the last byte fed: where the next read starts.
    pub fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// Position after the last record handed out.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Nothing held: every byte fed went out in a record.
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.pending.is_none()
    }

    /// Starts over at position 0 (the file was truncated). Call
    /// [`LineAssembler::flush`] with `force` first to keep what was held.
    pub fn restart(&mut self) {
        self.read_pos = 0;
        self.committed = 0;
        self.partial.clear();
        self.partial_since = None;
        self.cutting = false;
    }

    /// The bytes read at [`LineAssembler::read_pos`]. Returns the finished
    /// records; [`LineAssembler::committed`] is the position after them.
    pub fn feed(&mut self, data: &[u8], now: Instant, wall_ms: i64) -> Vec<LogRecord> {
        let base = self.read_pos;
        let mut out = Vec::new();
        let mut start = 0usize;
        for newline in memchr::memchr_iter(b'\n', data) {
            let end = base + newline as u64 + 1;
            let segment = &data[start..newline];
            start = newline + 1;
            if self.cutting {
                // The rest of a cut line ended; its record went out already.
                self.cutting = false;
                match &mut self.pending {
                    Some((_, pending_end, _)) => *pending_end = end,
                    None => self.committed = end,
                }
                continue;
            }
            let record = if self.partial.is_empty() {
                self.record(segment, wall_ms)
            } else {
                self.partial.extend_from_slice(segment);
                let line = std::mem::take(&mut self.partial);
                self.record(&line, wall_ms)
            };
            self.push(record, end, now, &mut out);
        }
        let rest = &data[start..];
        self.read_pos = base + data.len() as u64;
        if !self.cutting && !rest.is_empty() {
            self.partial.extend_from_slice(rest);
            self.partial_since.get_or_insert(now);
            if self.partial.len() > self.max_line_bytes {
                let line = std::mem::take(&mut self.partial);
                let record = self.record(&line, wall_ms);
                self.cutting = true;
                self.push(record, self.read_pos, now, &mut out);
            }
        }
        if self.partial.is_empty() {
            self.partial_since = None;
        }
        out
    }

    /// Sends what was held for `timeout` (or everything, with `force`): a
    /// last line without newline, a multiline record.
    pub fn flush(
        &mut self,
        now: Instant,
        timeout: Duration,
        force: bool,
        wall_ms: i64,
    ) -> Vec<LogRecord> {
        let due = |since: Instant| force || now.saturating_duration_since(since) >= timeout;
        let mut out = Vec::new();
        if self.partial_since.is_some_and(due) {
            let line = std::mem::take(&mut self.partial);
            self.partial_since = None;
            let record = self.record(&line, wall_ms);
            self.push(record, self.read_pos, now, &mut out);
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|(_, _, since)| due(*since))
            && let Some((record, end, _)) = self.pending.take()
        {
            self.committed = self.committed.max(end);
            out.push(record);
        }
        out
    }

    /// A finished line: out at once, or into multiline assembly.
    fn push(&mut self, record: LogRecord, end: u64, now: Instant, out: &mut Vec<LogRecord>) {
        if self.multiline == Multiline::None {
            out.push(record);
            self.committed = end;
            return;
        }
        let continues = record.message.starts_with([' ', '\t']);
        match &mut self.pending {
            Some((pending, pending_end, _)) if continues => {
                pending.message.push('\n');
                pending.message.push_str(&record.message);
                *pending_end = end;
            }
            _ => {
                if let Some((finished, finished_end, _)) = self.pending.take() {
                    out.push(finished);
                    self.committed = finished_end;
                }
                self.pending = Some((record, end, now));
            }
        }
    }

    fn record(&self, bytes: &[u8], wall_ms: i64) -> LogRecord {
        let message = line_text(bytes, self.max_line_bytes);
        LogRecord {
            application: self.application.clone(),
            timestamp_ms: wall_ms,
            level: detect_level(&message),
            message,
            deployment_id: None,
        }
    }
}

/// A line's text: CR stripped, invalid UTF-8 replaced, cut at `max` bytes
/// (on a character boundary) with [`TRUNCATED_MARK`].
pub fn line_text(bytes: &[u8], max: usize) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    // Lossy conversion can make the text longer than the bytes (an
    // invalid byte becomes a 3-byte U+FFFD): cut the text, not the bytes.
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max && text.len() <= max {
        // Cut in the bytes already: mark it.
        let mut text = text;
        text.push_str(TRUNCATED_MARK);
        text
    } else {
        o1_common::text::cut(text, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// Feeds `chunks` one after another; returns the messages out and the
    /// committed position after each chunk.
    fn run(multiline: Multiline, max: usize, chunks: &[&[u8]]) -> (Vec<String>, Vec<u64>) {
        let mut lines = LineAssembler::new("app", multiline, max, 0);
        let now = Instant::now();
        let mut messages = Vec::new();
        let mut committed = Vec::new();
        for chunk in chunks {
            messages.extend(lines.feed(chunk, now, 0).into_iter().map(|r| r.message));
            committed.push(lines.committed());
        }
        (messages, committed)
    }

    #[test]
    fn lines_table() {
        type Case<'a> = (
            &'a str,
            Multiline,
            usize,
            &'a [&'a [u8]],
            &'a [&'a str],
            &'a [u64],
        );
        let cases: &[Case] = &[
            (
                "whole lines",
                Multiline::None,
                100,
                &[b"a\nbb\n"],
                &["a", "bb"],
                &[5],
            ),
            (
                "split anywhere",
                Multiline::None,
                100,
                &[b"he", b"llo\nwor", b"ld\n"],
                &["hello", "world"],
                &[0, 6, 12],
            ),
            ("CRLF", Multiline::None, 100, &[b"x\r\n"], &["x"], &[3]),
            (
                "empty line",
                Multiline::None,
                100,
                &[b"\n\n"],
                &["", ""],
                &[2],
            ),
            (
                "cut, rest skipped",
                Multiline::None,
                4,
                &[b"abcdefgh", b"ij\nok\n"],
                &["abcd\u{2026}[truncated]", "ok"],
                &[8, 14],
            ),
            (
                "cut within a chunk",
                Multiline::None,
                4,
                &[b"abcdefgh\nok\n"],
                &["abcd\u{2026}[truncated]", "ok"],
                &[12],
            ),
            (
                "invalid UTF-8",
                Multiline::None,
                100,
                &[b"bad \xff\n"],
                &["bad \u{fffd}"],
                &[6],
            ),
            (
                "stack trace joined",
                Multiline::Indented,
                100,
                &[b"ERROR boom\n  at a\n\tat b\nINFO next\n"],
                &["ERROR boom\n  at a\n\tat b"],
                &[24],
            ),
            (
                "held until the next record",
                Multiline::Indented,
                100,
                &[b"one\n", b"two\n"],
                &["one"],
                &[0, 4],
            ),
        ];
        for (name, multiline, max, chunks, messages, committed) in cases {
            let (got, positions) = run(*multiline, *max, chunks);
            assert_eq!(got, *messages, "{name}");
            assert_eq!(positions, *committed, "{name}");
        }
    }

    #[test]
    fn line_texts_are_cut_and_cleaned() {
        assert_eq!(
            line_text(b"ERROR bad \xff byte\r", 1000),
            "ERROR bad \u{fffd} byte"
        );
        assert_eq!(
            line_text(&[b'x'; 100], 64),
            format!("{}{TRUNCATED_MARK}", "x".repeat(64))
        );
        // Invalid bytes grow three-fold as U+FFFD: cut on a character
        // boundary, never a panic.
        for len in [10, 63, 64, 65, 30_000] {
            let text = line_text(&vec![0xff; len], 64);
            assert!(text.len() <= 64 + TRUNCATED_MARK.len(), "{len}");
            assert_eq!(text.ends_with(TRUNCATED_MARK), len * 3 > 64, "{len}");
        }
    }

    #[test]
    fn held_lines_go_out_after_the_timeout() {
        let start = Instant::now();
        let mut lines = LineAssembler::new("app", Multiline::None, 100, 0);
        assert!(lines.feed(b"no newline", start, 0).is_empty());
        assert!(!lines.is_idle());
        assert!(
            lines
                .flush(start + TIMEOUT / 2, TIMEOUT, false, 0)
                .is_empty()
        );
        let out = lines.flush(start + TIMEOUT, TIMEOUT, false, 0);
        assert_eq!(out[0].message, "no newline");
        assert_eq!(lines.committed(), 10);
        assert!(lines.is_idle());

        let mut lines = LineAssembler::new("app", Multiline::Indented, 100, 0);
        assert!(lines.feed(b"Exception\n  at x\n", start, 0).is_empty());
        let out = lines.flush(start + TIMEOUT, TIMEOUT, false, 0);
        assert_eq!(out[0].message, "Exception\n  at x");
        assert_eq!(lines.committed(), 17);
        // force: everything at once.
        let mut lines = LineAssembler::new("app", Multiline::Indented, 100, 0);
        lines.feed(b"a\nb", start, 0);
        let out = lines.flush(start, TIMEOUT, true, 0);
        let messages: Vec<&str> = out.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["a", "b"]);
        assert_eq!(lines.committed(), 3);
    }

    #[test]
    fn thirty_thousand_invalid_bytes_are_one_cut_line_never_a_panic() {
        let mut lines = LineAssembler::new("app", Multiline::None, 16 * 1024, 0);
        let mut data = vec![0xff; 30_000];
        data.push(b'\n');
        data.extend_from_slice(b"INFO after\n");
        let out = lines.feed(&data, Instant::now(), 0);
        assert_eq!(out.len(), 2);
        assert!(out[0].message.ends_with(TRUNCATED_MARK));
        assert!(out[0].message.len() <= 16 * 1024 + TRUNCATED_MARK.len());
        assert_eq!(out[1].message, "INFO after");
        assert_eq!(lines.committed(), data.len() as u64);
    }

    proptest! {
        /// However the bytes are split into reads, the same records come
        /// out, every complete line once, and the committed position ends
        /// after the last newline.
        #[test]
        fn chunking_never_changes_the_records(
            lines in proptest::collection::vec("[a-z \\t\\xff]{0,40}", 0..30),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
            max in 1usize..50,
            indented in any::<bool>(),
        ) {
            // 'ÿ' stands for an invalid byte, 0xFF.
            let text: Vec<u8> = lines.iter().flat_map(|l| {
                let mut bytes: Vec<u8> = l.chars().map(|c| if c == '\u{ff}' { 0xff } else { c as u8 }).collect();
                bytes.push(b'\n');
                bytes
            }).collect();
            let multiline = if indented { Multiline::Indented } else { Multiline::None };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                chunks.push(&text[at..cut]);
                at = cut;
            }
            let now = Instant::now();
            let collect = |chunks: &[&[u8]]| {
                let mut assembler = LineAssembler::new("app", multiline, max, 0);
                let mut out: Vec<String> = Vec::new();
                for chunk in chunks {
                    out.extend(assembler.feed(chunk, now, 0).into_iter().map(|r| r.message));
                }
                out.extend(assembler.flush(now, TIMEOUT, true, 0).into_iter().map(|r| r.message));
                (out, assembler.committed(), assembler.is_idle())
            };
            let (whole, committed, idle) = collect(&[&text]);
            let (split, split_committed, _) = collect(&chunks);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(committed, text.len() as u64);
            prop_assert_eq!(split_committed, text.len() as u64);
            prop_assert!(idle);
            if !indented {
                prop_assert_eq!(whole.len(), lines.len());
                for message in &whole {
                    prop_assert!(message.len() <= max + TRUNCATED_MARK.len());
                }
            }
        }
    }
}
