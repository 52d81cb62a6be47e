//! Peer-supplied text made safe for a log line.

use std::fmt;

/// Most characters of one peer-supplied text written to a log line; the rest is cut and
/// marked with `…`.
const MAX_LOGGED_CHARS: usize = 128;

/// Displays text that a peer chose (a gate's firmware string, a close reason) with control
/// characters, quotes and backslashes escaped as in Rust string literals (`\n`, `\u{1b}`),
/// cut to [`MAX_LOGGED_CHARS`] characters: a peer cannot forge log lines, drive an
/// operator's terminal, or fill the log.
pub(crate) struct PeerText<'a>(pub(crate) &'a str);

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_LOGGED_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let forged = "fw-1\n2026-01-01 INFO gate connected\u{1b}[2J\"";
        let shown = PeerText(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "fw-1\\n2026-01-01 INFO gate connected\\u{1b}[2J\\\"");
    }

    #[test]
    fn long_text_is_cut() {
        let long = "é".repeat(MAX_LOGGED_CHARS + 1);
        let shown = PeerText(&long).to_string();
        assert_eq!(shown.chars().count(), MAX_LOGGED_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(PeerText("fw-2.1").to_string(), "fw-2.1");
    }
}
