//! Deployment ids: the one rule the relay enforces and the agent checks
//! before it runs anything, and the form of a generated id.

use crate::Timestamp;

/// The longest deployment id.
pub const MAX_ID_BYTES: usize = 128;

/// What [`valid_id`] accepts, for error messages.
pub const ID_RULE: &str = "use 1-128 letters, digits, '-', '_' or '.'";

/// 1 to 128 ASCII letters, digits, `-`, `_` or `.`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `deploy-YYYYMMDD-HHMMSS` of `now` (UTC), the seed page's form. Callers
/// that may make several in one second add `-2`, `-3`...
pub fn base_id(now: Timestamp) -> String {
    // 2024-01-15T10:30:00Z or with milliseconds: the first 14 digits.
    let digits: String = now
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    let split = 8.min(digits.len());
    format!("deploy-{}-{}", &digits[..split], &digits[split..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let table = [
            ("deploy-20240115-103000", true),
            ("a.b_c-9", true),
            ("", false),
            ("has space", false),
            ("ünïcode", false),
            ("../etc", false),
        ];
        for (id, valid) in table {
            assert_eq!(valid_id(id), valid, "{id}");
        }
        assert!(valid_id(&"x".repeat(128)));
        assert!(!valid_id(&"x".repeat(129)));
        let now = Timestamp::parse("2024-01-15T10:30:00.250Z").unwrap();
        assert_eq!(base_id(now), "deploy-20240115-103000");
        assert!(valid_id(&base_id(now)));
    }
}
