//! Text from plugins on its way to logs and the API: cut to a size the API server accepts, and
//! with control characters escaped. Used by the sandbox (guest output, messages) and by the
//! status and Event writers alike.

/// The most of a plugin's own text (a name, a message) quoted in a log line or an error.
pub const MAX_QUOTE: usize = 1024;

/// `text` cut to at most `max` bytes (at a character boundary), with a marker saying how much
/// was dropped, so a plugin's huge message never makes a write the API server refuses.
pub fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let marker = format!(" … [{} bytes truncated]", text.len());
    let mut end = max.saturating_sub(marker.len() + 8);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = text.len() - end;
    format!("{} … [{dropped} bytes truncated]", &text[..end])
}

/// `text` with control characters (newlines included) escaped, so a plugin cannot forge host
/// log lines.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_texts_are_capped_with_a_marker() {
        let huge = "é".repeat(20 * 1024 * 1024);
        let capped = cap(&huge, 32_768);
        assert!(capped.len() <= 32_768, "{}", capped.len());
        assert!(capped.ends_with("bytes truncated]"), "{}", &capped[capped.len() - 40..]);
        assert_eq!(cap("short", 10), "short");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(escape_controls("plain"), "plain");
    }
}
