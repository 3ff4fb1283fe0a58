//! Finding a log line's level: a JSON line's `level`/`severity` field, or a
//! level word near the start of the line (`ERROR`, `[warn]`, `level=info`,
//! `<E>`...). Lines without one are INFO.

use o1_common::Level;

/// Words looked at before giving up on a plain-text line.
const WORDS_TO_CHECK: usize = 6;

pub fn detect_level(line: &str) -> Level {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{')
        && let Some(level) = json_level(trimmed)
    {
        return level;
    }
    text_level(trimmed).unwrap_or(Level::Info)
}

fn json_level(line: &str) -> Option<Level> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let object = value.as_object()?;
    for field in [
        "level",
        "severity",
        "lvl",
        "loglevel",
        "log.level",
        "levelname",
    ] {
        match object.get(field) {
            Some(serde_json::Value::String(word)) => {
                if let Some(level) = Level::from_word(word.trim()) {
                    return Some(level);
                }
            }
            Some(serde_json::Value::Number(n)) => {
                if let Some(n) = n.as_u64() {
                    // bunyan/pino: 10 trace … 60 fatal; else syslog 0-7.
                    return Some(if n >= 10 {
                        match n {
                            10..=19 => Level::Trace,
                            20..=29 => Level::Debug,
                            30..=39 => Level::Info,
                            40..=49 => Level::Warning,
                            50..=59 => Level::Error,
                            _ => Level::Critical,
                        }
                    } else {
                        Level::from_syslog_severity(n)
                    });
                }
            }
            _ => {}
        }
    }
    None
}

fn text_level(line: &str) -> Option<Level> {
    line.split(|c: char| c.is_whitespace() || c == '|')
        .filter(|w| !w.is_empty())
        .take(WORDS_TO_CHECK)
        .find_map(|raw| {
            let (word, keyed) = match raw
                .strip_prefix("level=")
                .or_else(|| raw.strip_prefix("lvl="))
                .or_else(|| raw.strip_prefix("severity="))
            {
                Some(rest) => (rest, true),
                None => (raw, false),
            };
            let bare = word.trim_matches(|c: char| {
                matches!(
                    c,
                    '[' | ']' | '(' | ')' | '<' | '>' | ':' | ',' | '"' | '\''
                )
            });
            // A lower-case level word in running text ("the error was...")
            // is not a level: require capitals, brackets, a colon or a key.
            let decorated = keyed || bare.len() != word.len();
            let shouting = bare.bytes().all(|b| b.is_ascii_uppercase());
            if bare.len() < 3 || !(decorated || shouting) {
                return None;
            }
            Level::from_word(bare)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_detection_table() {
        let table = [
            (
                "2024-01-15T10:30:00Z ERROR db: connection refused",
                Level::Error,
            ),
            ("[WARN] disk almost full", Level::Warning),
            ("time=1 level=debug msg=hi", Level::Debug),
            (
                "Jan 15 10:30:00 host app[12]: fatal: out of memory",
                Level::Critical,
            ),
            (r#"{"level":"warning","msg":"slow"}"#, Level::Warning),
            (r#"{"severity":"ERROR","message":"x"}"#, Level::Error),
            (r#"{"level":50,"msg":"pino error"}"#, Level::Error),
            (r#"{"level":3,"msg":"syslog err"}"#, Level::Error),
            (
                "user says the error was in step 9 of the wizard",
                Level::Info,
            ),
            ("plain line", Level::Info),
            ("INFO: started", Level::Info),
            ("trace: entering", Level::Trace),
            ("", Level::Info),
        ];
        for (line, expected) in table {
            assert_eq!(detect_level(line), expected, "{line}");
        }
    }
}
