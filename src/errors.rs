//! How `pier` prints an error: the cause on the first line, then what it was doing.
//!
//! anyhow's default (`Error: pier up` and, lines later, `Caused by:`) puts the least useful
//! words first. The innermost message is the cause; the context just above it usually names the
//! thing (a file, an address) the cause is about, so both share the first line.

/// The text for an error chain, outermost first (as `anyhow::Error::chain` yields it).
pub fn render(chain: &[String]) -> String {
    let mut out = String::from("error: ");
    match chain {
        [] => out.push_str("unknown error"),
        [only] => out.push_str(only),
        [outer @ .., subject, cause] => {
            out.push_str(subject);
            // Some messages already end with their source's (`...: {source}`).
            if !subject.ends_with(cause.as_str()) {
                out.push_str(": ");
                out.push_str(cause);
            }
            out.push('\n');
            for context in outer.iter().rev() {
                out.push_str("  while: ");
                out.push_str(context);
                out.push('\n');
            }
            return out;
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn the_first_line_names_the_cause_and_its_subject() {
        let text = render(&chain(&[
            "pier up",
            "serving HTTPS on 127.0.0.1:6443",
            "Address already in use (os error 98)",
        ]));
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("error: serving HTTPS on 127.0.0.1:6443: Address already in use (os error 98)")
        );
        assert_eq!(lines.next(), Some("  while: pier up"));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn a_cause_already_in_its_subject_is_not_repeated() {
        let text = render(&chain(&["opening x: gone", "gone"]));
        assert_eq!(text, "error: opening x: gone\n");
    }

    #[test]
    fn a_single_message_is_the_whole_error() {
        assert_eq!(
            render(&chain(&["pier up needs root"])),
            "error: pier up needs root\n"
        );
        assert_eq!(render(&[]), "error: unknown error\n");
    }
}
