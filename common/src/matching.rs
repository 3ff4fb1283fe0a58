//! Subscription matching as pure functions: which log lines and metric
//! samples a subscription wants, and which fields of a sample it sees.

use std::sync::Arc;

use crate::api::{MetricName, SubscribeLogs, SubscribeMetrics};
use crate::level::Level;

/// What a `subscribe-logs` subscription wants, prepared for fast matching.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFilter {
    /// `None` = any host. Shared (`Arc`): the relay keeps one copy of a
    /// name for the filter, its index and its handle.
    pub host: Option<Arc<str>>,
    /// `None` = any application.
    pub application: Option<Arc<str>>,
    /// Lower-cased search text; `None` (or empty in the request) = any.
    pub search_lower: Option<String>,
    /// Minimum level; `None` = any.
    pub min_level: Option<Level>,
}

impl LogFilter {
    pub fn from_request(request: &SubscribeLogs) -> Self {
        LogFilter {
            host: non_empty(&request.host),
            application: non_empty(&request.application),
            search_lower: request
                .search
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(str::to_lowercase),
            min_level: request.level,
        }
    }

    /// Whether a line matches. `host` and `application` compare exactly;
    /// `search` is a case-insensitive substring of the message.
    pub fn matches(&self, host: &str, application: &str, level: Level, message: &str) -> bool {
        self.source_matches(host, application) && self.content_matches(level, message)
    }

    /// The host and application part, which the relay's index already
    /// decides for most subscriptions.
    pub fn source_matches(&self, host: &str, application: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
            && self.application.as_deref().is_none_or(|a| a == application)
    }

    /// The level and search part.
    pub fn content_matches(&self, level: Level, message: &str) -> bool {
        self.min_level.is_none_or(|min| level >= min)
            && self
                .search_lower
                .as_deref()
                .is_none_or(|needle| contains_case_insensitive(message, needle))
    }

    /// The level and search part against a message lower-cased once by the
    /// caller ([`lower`]) and shared by every subscription it is matched
    /// against: linear in the line and the needle.
    pub fn content_matches_lowered(&self, level: Level, lowered: &str) -> bool {
        self.min_level.is_none_or(|min| level >= min)
            && self.search_lower.as_deref().is_none_or(|needle| {
                memchr::memmem::find(lowered.as_bytes(), needle.as_bytes()).is_some()
            })
    }

    /// Whether matching needs the lower-cased message at all.
    pub fn searches(&self) -> bool {
        self.search_lower.is_some()
    }
}

// A selection is a bit set in a u8.
const _: () = assert!(MetricName::ALL.len() <= 8);

/// What a `subscribe-metrics` subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricSelection {
    bits: u8,
}

impl MetricSelection {
    /// How many different selections there are: one bit per metric name.
    pub const COUNT: usize = 1 << MetricName::ALL.len();
    pub const ALL: MetricSelection = MetricSelection {
        bits: (Self::COUNT - 1) as u8,
    };

    /// `None` (the field absent) selects all metrics. Duplicates are fine.
    pub fn from_names(names: Option<&[MetricName]>) -> Self {
        match names {
            None => MetricSelection::ALL,
            Some(names) => MetricSelection {
                bits: names.iter().fold(0, |bits, name| bits | Self::bit(*name)),
            },
        }
    }

    /// One bit per name, by its place in [`MetricName::ALL`] (the enum's
    /// declaration order).
    fn bit(name: MetricName) -> u8 {
        1 << name as u8
    }

    pub fn contains(self, name: MetricName) -> bool {
        self.bits & Self::bit(name) != 0
    }

    /// A dense index in `0..COUNT`, to cache one serialization per
    /// selection.
    pub fn index(self) -> usize {
        usize::from(self.bits)
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricFilter {
    pub host: Option<Arc<str>>,
    pub application: Option<Arc<str>>,
    pub selection: MetricSelection,
}

impl MetricFilter {
    pub fn from_request(request: &SubscribeMetrics) -> Self {
        MetricFilter {
            host: non_empty(&request.host),
            application: non_empty(&request.application),
            selection: MetricSelection::from_names(request.metrics.as_deref()),
        }
    }

    pub fn matches(&self, host: &str, application: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
            && self.application.as_deref().is_none_or(|a| a == application)
    }
}

fn non_empty(value: &Option<String>) -> Option<Arc<str>> {
    value.as_deref().filter(|v| !v.is_empty()).map(Arc::from)
}

/// The lower-cased text search compares against: ASCII lower-casing for
/// ASCII text (no table lookups), full Unicode lower-casing otherwise, so
/// `ÉCHEC` matches `échec`.
pub fn lower(text: &str) -> String {
    if text.is_ascii() {
        text.to_ascii_lowercase()
    } else {
        text.to_lowercase()
    }
}

/// Case-insensitive substring test against an already lower-cased needle,
/// linear in both (memchr's two-way search, not a window per position).
pub fn contains_case_insensitive(haystack: &str, needle_lower: &str) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    memchr::memmem::find(lower(haystack).as_bytes(), needle_lower.as_bytes()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selection_has_its_own_index_below_count() {
        for (place, name) in MetricName::ALL.into_iter().enumerate() {
            assert_eq!(name as usize, place, "ALL is in declaration order");
        }
        let mut seen = std::collections::HashSet::new();
        for mask in 0..MetricSelection::COUNT {
            let names: Vec<MetricName> = MetricName::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, n)| n)
                .collect();
            let selection = MetricSelection::from_names(Some(&names));
            assert!(selection.index() < MetricSelection::COUNT);
            assert!(seen.insert(selection.index()));
            for name in MetricName::ALL {
                assert_eq!(selection.contains(name), names.contains(&name));
            }
        }
        assert_eq!(MetricSelection::from_names(None), MetricSelection::ALL);
    }

    fn logs(
        host: Option<&str>,
        app: Option<&str>,
        search: Option<&str>,
        level: Option<Level>,
    ) -> LogFilter {
        LogFilter::from_request(&SubscribeLogs {
            host: host.map(Into::into),
            application: app.map(Into::into),
            search: search.map(Into::into),
            level,
            tail: None,
            since: None,
            request_id: None,
        })
    }

    #[test]
    fn log_filter_table() {
        use Level::*;
        // (filter, host, application, level, message, expected)
        let table = [
            (
                logs(None, None, None, None),
                "h1",
                "a",
                Info,
                "anything",
                true,
            ),
            (
                logs(Some("h1"), None, None, None),
                "h1",
                "a",
                Info,
                "x",
                true,
            ),
            (
                logs(Some("h1"), None, None, None),
                "h2",
                "a",
                Info,
                "x",
                false,
            ),
            (
                logs(Some(""), Some(""), Some(""), None),
                "h2",
                "b",
                Debug,
                "x",
                true,
            ),
            (
                logs(None, Some("Anvil"), None, None),
                "h1",
                "Anvil",
                Info,
                "x",
                true,
            ),
            (
                logs(None, Some("Anvil"), None, None),
                "h1",
                "anvil",
                Info,
                "x",
                false,
            ),
            (
                logs(None, None, Some("error"), None),
                "h",
                "a",
                Info,
                "An ERROR happened",
                true,
            ),
            (
                logs(None, None, Some("ERROR"), None),
                "h",
                "a",
                Info,
                "an error happened",
                true,
            ),
            (
                logs(None, None, Some("error"), None),
                "h",
                "a",
                Info,
                "all good",
                false,
            ),
            (
                logs(None, None, Some("échec"), None),
                "h",
                "a",
                Info,
                "ÉCHEC total",
                true,
            ),
            (
                logs(None, None, None, Some(Warning)),
                "h",
                "a",
                Warning,
                "x",
                true,
            ),
            (
                logs(None, None, None, Some(Warning)),
                "h",
                "a",
                Critical,
                "x",
                true,
            ),
            (
                logs(None, None, None, Some(Warning)),
                "h",
                "a",
                Info,
                "x",
                false,
            ),
            (
                logs(Some("h"), Some("a"), Some("disk"), Some(Error)),
                "h",
                "a",
                Error,
                "Disk full",
                true,
            ),
            (
                logs(Some("h"), Some("a"), Some("disk"), Some(Error)),
                "h",
                "a",
                Warning,
                "Disk full",
                false,
            ),
        ];
        for (i, (filter, host, app, level, message, expected)) in table.into_iter().enumerate() {
            assert_eq!(
                filter.matches(host, app, level, message),
                expected,
                "row {i}: {filter:?}"
            );
        }
    }

    #[test]
    fn metric_selection_table() {
        use MetricName::*;
        let table: [(Option<&[MetricName]>, [bool; 4]); 5] = [
            (None, [true, true, true, true]),
            (Some(&[]), [false, false, false, false]),
            (Some(&[Cpu]), [true, false, false, false]),
            (Some(&[Cpu, Memory, Disk]), [true, true, true, false]),
            (Some(&[Network, Network]), [false, false, false, true]),
        ];
        for (names, expected) in table {
            let selection = MetricSelection::from_names(names);
            let got = MetricName::ALL.map(|name| selection.contains(name));
            assert_eq!(got, expected, "{names:?}");
            assert!(selection.index() < 16);
        }
    }

    #[test]
    fn metric_filter_matches_host_and_application() {
        let filter = MetricFilter::from_request(&SubscribeMetrics {
            host: Some("test-anvil-01".into()),
            application: None,
            metrics: None,
            history: None,
            request_id: None,
        });
        assert!(filter.matches("test-anvil-01", "Anvil"));
        assert!(filter.matches("test-anvil-01", "system"));
        assert!(!filter.matches("test-anvil-02", "Anvil"));
    }

    #[test]
    fn case_insensitive_search_edge_cases() {
        assert!(contains_case_insensitive("abc", ""));
        assert!(!contains_case_insensitive("", "a"));
        assert!(!contains_case_insensitive("ab", "abc"));
        assert!(contains_case_insensitive("xxABCxx", "abc"));
        assert!(contains_case_insensitive("Fehler: ÉCHEC", "échec"));
        // Worst case of the old window-per-position search: a long needle
        // that almost matches everywhere. Linear now (no timing asserted;
        // this only has to finish).
        let line = "a".repeat(8192);
        let needle = format!("{}b", "a".repeat(4095));
        assert!(!contains_case_insensitive(&line, &needle));
        let filter = LogFilter {
            search_lower: Some("disk full".into()),
            ..LogFilter::default()
        };
        assert!(filter.content_matches_lowered(Level::Info, &lower("ERROR: Disk Full on /")));
        assert!(!filter.content_matches_lowered(Level::Info, &lower("all good")));
    }
}
