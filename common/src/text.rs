//! Cutting text to a byte limit, the same way everywhere (agent lines,
//! journal entries, relay history, deployment logs).

/// What a cut message ends with.
pub const TRUNCATED_MARK: &str = "…[truncated]";

/// `text` cut to at most `max` bytes, on a character boundary, and marked
/// with [`TRUNCATED_MARK`], if it is longer; otherwise unchanged.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED_MARK);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        let table = [
            ("short", 10, "short"),
            ("exactly10!", 10, "exactly10!"),
            ("abcdefghijk", 10, "abcdefghij…[truncated]"),
            // 'é' is two bytes: never cut inside it.
            ("ééééé", 5, "éé…[truncated]"),
            ("\u{fffd}\u{fffd}", 4, "\u{fffd}…[truncated]"),
        ];
        for (text, max, expected) in table {
            assert_eq!(cut(text.to_owned(), max), expected, "{text} at {max}");
        }
    }
}
