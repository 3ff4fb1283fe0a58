//! Timestamps: milliseconds since the Unix epoch inside the system, RFC 3339
//! UTC text on the public API (`2024-01-15T10:30:00Z`, or with `.123` when
//! the milliseconds are not zero).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time with millisecond precision, serialized as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub unix_millis: i64,
}

impl Timestamp {
    pub const fn from_unix_millis(unix_millis: i64) -> Self {
        Timestamp { unix_millis }
    }

    /// The current wall-clock time. The only clock read in this crate, kept
    /// for callers' convenience; pure code takes a `Timestamp` argument.
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp::from_unix_millis((nanos / 1_000_000) as i64)
    }

    /// Parses RFC 3339 text with any offset; the result is normalised to UTC.
    pub fn parse(text: &str) -> Result<Self, time::error::Parse> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)?;
        Ok(Timestamp::from_unix_millis(
            (parsed.unix_timestamp_nanos() / 1_000_000) as i64,
        ))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.unix_millis) * 1_000_000;
        let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
            return write!(f, "invalid-timestamp({})", self.unix_millis);
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )?;
        let millis = at.millisecond();
        if millis != 0 {
            write!(f, ".{millis:03}")?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("expected an RFC 3339 timestamp, {e}")))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .description(Some("RFC 3339, UTC, millisecond precision"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_seed_page() {
        let cases = [
            ("2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
            ("2024-01-15T10:30:00.120Z", "2024-01-15T10:30:00.120Z"),
            ("2024-01-15T11:30:00+01:00", "2024-01-15T10:30:00Z"),
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
        ];
        for (input, expected) in cases {
            let ts = Timestamp::parse(input).unwrap();
            assert_eq!(ts.to_string(), expected, "input {input}");
        }
    }

    #[test]
    fn rejects_non_rfc3339() {
        for bad in ["yesterday", "2024-01-15", "2024-01-15 10:30:00", ""] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
