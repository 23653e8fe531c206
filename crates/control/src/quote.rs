//! Go's string quoting (`strconv.Quote`, `%q`, `%#q`), which upstream's error messages use.
//! Kept here so the CLI and the server quote values in exactly the same way.

/// Go's `strconv.Quote` (what `%q` prints for a string).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `strconv.QuoteRune` (what `%q` prints for a rune).
pub fn quote_rune(c: char) -> String {
    let mut out = String::from('\'');
    push_escaped(&mut out, c, '\'');
    out.push('\'');
    out
}

/// Go's `%#q` for a string: backquoted when that is possible, otherwise like [`quote`].
pub fn backquote(s: &str) -> String {
    let can = s
        .chars()
        .all(|c| c == '\t' || (c != '`' && c != '\u{FEFF}' && is_print(c)));
    if can {
        format!("`{s}`")
    } else {
        quote(s)
    }
}

fn push_escaped(out: &mut String, c: char, delimiter: char) {
    use std::fmt::Write as _;
    if c == delimiter || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if is_print(c) {
        out.push(c);
        return;
    }
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// An approximation of Go's `unicode.IsPrint` (std has no general categories): the ASCII space
/// and every non-control, non-space character except the common invisible format characters.
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c,
        '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{e000}'..='\u{f8ff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(quote("a\"b\\c\td\u{1}é"), r#""a\"b\\c\td\x01é""#);
        assert_eq!(quote_rune('\''), r"'\''");
        assert_eq!(backquote("x y"), "`x y`");
        assert_eq!(backquote("a`b"), r#""a`b""#);
    }
}
