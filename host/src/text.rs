//! Cutting text that crossed from an untrusted side down to a cap.

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to at most `max` bytes (on a character boundary), with an
/// ellipsis when anything was cut.
pub fn ellipsize(text: &str, max: usize) -> String {
    let kept = cut(text, max);
    if kept.len() == text.len() {
        text.to_string()
    } else {
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("hi", 10), "hi");
        assert_eq!(ellipsize("héllo", 3), "hé…");
        assert_eq!(ellipsize("hi", 3), "hi");
    }
}
