//! Log levels, normalised to the six names of the contract (DESIGN.md):
//! TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A normalised log level. Ordered from least to most severe, so a minimum
/// level filter is a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    Trace,
    Debug,
    #[default]
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warning,
        Level::Error,
        Level::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// Normalises a level word as programs write it (`warn`, `Warning`,
    /// `ERR`, `fatal`, `panic`, `notice`, syslog's `crit`/`emerg`/`alert`...).
    /// Returns `None` for a word that is not a level.
    pub fn from_word(word: &str) -> Option<Level> {
        let mut upper = [0u8; 12];
        let bytes = word.as_bytes();
        if bytes.is_empty() || bytes.len() > upper.len() {
            return None;
        }
        for (slot, byte) in upper.iter_mut().zip(bytes) {
            *slot = byte.to_ascii_uppercase();
        }
        let level = match &upper[..bytes.len()] {
            b"TRACE" | b"TRC" => Level::Trace,
            b"DEBUG" | b"DBG" | b"DEBU" => Level::Debug,
            b"INFO" | b"INF" | b"NOTICE" | b"INFORMATION" => Level::Info,
            b"WARN" | b"WARNING" | b"WRN" => Level::Warning,
            b"ERROR" | b"ERR" | b"EROR" => Level::Error,
            b"CRITICAL" | b"CRIT" | b"FATAL" | b"PANIC" | b"EMERG" | b"ALERT" | b"EMERGENCY" => {
                Level::Critical
            }
            _ => return None,
        };
        Some(level)
    }

    /// Maps a numeric severity: syslog (0 = emergency … 7 = debug).
    pub fn from_syslog_severity(severity: u64) -> Level {
        match severity {
            0..=2 => Level::Critical,
            3 => Level::Error,
            4 => Level::Warning,
            5 | 6 => Level::Info,
            _ => Level::Debug,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(self.as_str())
        } else {
            serializer.serialize_u8(*self as u8)
        }
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let word = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            Level::from_word(&word).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown level `{word}`, expected one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL"
                ))
            })
        } else {
            let index = u8::deserialize(deserializer)?;
            Level::ALL.get(usize::from(index)).copied().ok_or_else(|| {
                serde::de::Error::custom(format!("level index {index} out of range"))
            })
        }
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Level {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Level::ALL.iter().map(|l| l.as_str())))
            .description(Some(
                "Log level; requests also accept the usual aliases (WARN, ERR, FATAL, ...)",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Level {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_level_words() {
        let table = [
            ("info", Some(Level::Info)),
            ("INFO", Some(Level::Info)),
            ("Warn", Some(Level::Warning)),
            ("WARNING", Some(Level::Warning)),
            ("err", Some(Level::Error)),
            ("Error", Some(Level::Error)),
            ("fatal", Some(Level::Critical)),
            ("CRIT", Some(Level::Critical)),
            ("panic", Some(Level::Critical)),
            ("debug", Some(Level::Debug)),
            ("trace", Some(Level::Trace)),
            ("notice", Some(Level::Info)),
            ("information", Some(Level::Info)),
            ("hello", None),
            ("", None),
            ("averyveryverylongword", None),
        ];
        for (word, expected) in table {
            assert_eq!(Level::from_word(word), expected, "word {word:?}");
        }
    }

    #[test]
    fn levels_are_ordered_by_severity() {
        assert!(Level::Trace < Level::Debug);
        assert!(Level::Warning < Level::Error);
        assert!(Level::Error < Level::Critical);
    }
}
