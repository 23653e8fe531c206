//! Value parsers and quoting that behave like Go's `strconv`, because upstream's flag values are
//! parsed by pflag with `strconv` and its error messages are part of the observable interface.

use kamal_control::quote::quote;
use std::fmt;

/// Why a Go-style number or boolean could not be parsed (`strconv.ErrSyntax` / `ErrRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumErrorKind {
    /// The text is not a number (or boolean) at all.
    Syntax,
    /// The number does not fit in 64 bits.
    Range,
}

/// A `strconv.NumError`: renders as `strconv.ParseInt: parsing "1k": invalid syntax`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NumError {
    func: &'static str,
    input: String,
    kind: NumErrorKind,
}

impl NumError {
    fn new(func: &'static str, input: &str, kind: NumErrorKind) -> Self {
        NumError {
            func,
            input: input.to_string(),
            kind,
        }
    }

    /// Whether the value overflowed rather than being malformed.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> NumErrorKind {
        self.kind
    }
}

impl fmt::Display for NumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            NumErrorKind::Syntax => "invalid syntax",
            NumErrorKind::Range => "value out of range",
        };
        write!(
            f,
            "strconv.{}: parsing {}: {}",
            self.func,
            quote(&self.input),
            why
        )
    }
}

const PARSE_INT: &str = "ParseInt";

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(s: &str) -> Result<bool, NumError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(NumError::new("ParseBool", s, NumErrorKind::Syntax)),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, base prefixes `0x`, `0o`, `0b` and a bare
/// leading `0` for octal, `_` separators between digits.
pub(crate) fn parse_int_base0(s: &str) -> Result<i64, NumError> {
    if s.is_empty() {
        return Err(NumError::new(PARSE_INT, s, NumErrorKind::Syntax));
    }
    let (negative, magnitude) = match s.as_bytes()[0] {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let unsigned = match parse_uint_base0(magnitude) {
        Ok(value) => value,
        Err(kind) => return Err(NumError::new(PARSE_INT, s, kind)),
    };
    let cutoff = 1u64 << 63;
    if !negative && unsigned >= cutoff {
        return Err(NumError::new(PARSE_INT, s, NumErrorKind::Range));
    }
    if negative && unsigned > cutoff {
        return Err(NumError::new(PARSE_INT, s, NumErrorKind::Range));
    }
    if negative {
        // `unsigned` is at most 2^63 here, so the wrapping negation is exact (i64::MIN included).
        Ok((unsigned as i64).wrapping_neg())
    } else {
        Ok(unsigned as i64)
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)`; on overflow the error is `Range` (Go then still reports the
/// range error from `ParseInt` with the signed input).
fn parse_uint_base0(s: &str) -> Result<u64, NumErrorKind> {
    if s.is_empty() {
        return Err(NumErrorKind::Syntax);
    }
    let bytes = s.as_bytes();
    let (base, digits): (u64, &[u8]) = if bytes[0] == b'0' {
        match bytes.get(1).map(u8::to_ascii_lowercase) {
            Some(b'b') if bytes.len() >= 3 => (2, &bytes[2..]),
            Some(b'o') if bytes.len() >= 3 => (8, &bytes[2..]),
            Some(b'x') if bytes.len() >= 3 => (16, &bytes[2..]),
            _ => (8, &bytes[1..]),
        }
    } else {
        (10, bytes)
    };
    let mut value: u64 = 0;
    let mut underscores = false;
    for &c in digits {
        let digit = match c {
            b'_' => {
                underscores = true;
                continue;
            }
            b'0'..=b'9' => u64::from(c - b'0'),
            b'a'..=b'z' | b'A'..=b'Z' => u64::from(c.to_ascii_lowercase() - b'a') + 10,
            _ => return Err(NumErrorKind::Syntax),
        };
        if digit >= base {
            return Err(NumErrorKind::Syntax);
        }
        value = value
            .checked_mul(base)
            .and_then(|v| v.checked_add(digit))
            .ok_or(NumErrorKind::Range)?;
    }
    if underscores && !underscores_ok(s) {
        return Err(NumErrorKind::Syntax);
    }
    Ok(value)
}

/// Go's rule for `_` in base-0 literals: only between digits, or between a base prefix and a digit.
fn underscores_ok(s: &str) -> bool {
    let bytes = s.as_bytes();
    // `saw` is the class of the previous character: '^' start, '0' digit or prefix, '_', '!' other.
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if bytes.len() >= 2 && bytes[0] == b'0' {
        let p = bytes[1].to_ascii_lowercase();
        if p == b'b' || p == b'o' || p == b'x' {
            i = 2;
            saw = b'0';
            hex = p == b'x';
        }
    }
    while i < bytes.len() {
        let c = bytes[i];
        i += 1;
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
            continue;
        }
        if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
            continue;
        }
        if saw == b'_' {
            return false;
        }
        saw = b'!';
    }
    saw != b'_'
}

/// Go's `strconv.Atoi`: plain base 10 with an optional sign (no prefixes, no `_`). Used for the
/// environment defaults of `run`, which upstream parses this way.
pub(crate) fn atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // i64's parser accepts exactly the same shape (sign, decimal digits) and range.
    s.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kamal_control::quote::{backquote, quote, quote_rune};

    #[test]
    fn bools_accept_exactly_gos_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "yes", "tRUE", "maybe", " true"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bool("maybe").unwrap_err().to_string(),
            r#"strconv.ParseBool: parsing "maybe": invalid syntax"#
        );
    }

    #[test]
    fn ints_follow_go_literal_syntax() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("42", 42),
            ("+42", 42),
            ("-42", -42),
            ("0x10", 16),
            ("0X1f", 31),
            ("010", 8),
            ("0o17", 15),
            ("0O17", 15),
            ("0b11", 3),
            ("-0b11", -3),
            ("1_000", 1000),
            ("0x_ff", 255),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("00", 0),
        ];
        for (input, want) in cases {
            assert_eq!(parse_int_base0(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn ints_reject_what_go_rejects() {
        for bad in [
            "", "-", "+", "1k", "1e2", "0x", "0b", "08", "0b2", "1__0", "_1", "1_", "0x_", "1.5",
            " 1", "++1", "0_x1",
        ] {
            let err = parse_int_base0(bad).unwrap_err();
            assert_eq!(err.kind(), NumErrorKind::Syntax, "{bad}");
        }
        assert_eq!(
            parse_int_base0("1k").unwrap_err().to_string(),
            r#"strconv.ParseInt: parsing "1k": invalid syntax"#
        );
    }

    #[test]
    fn ints_report_overflow_as_range_errors() {
        for big in [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999",
        ] {
            let err = parse_int_base0(big).unwrap_err();
            assert_eq!(err.kind(), NumErrorKind::Range, "{big}");
            assert_eq!(
                err.to_string(),
                format!("strconv.ParseInt: parsing \"{big}\": value out of range")
            );
        }
    }

    #[test]
    fn atoi_is_plain_base_ten() {
        assert_eq!(atoi("1234"), Some(1234));
        assert_eq!(atoi("-5"), Some(-5));
        assert_eq!(atoi("+5"), Some(5));
        for bad in [
            "",
            "abc",
            "0x10",
            "1_000",
            " 1",
            "1 ",
            "+",
            "-",
            "99999999999999999999",
        ] {
            assert_eq!(atoi(bad), None, "{bad}");
        }
        assert_eq!(atoi("010"), Some(10));
    }

    #[test]
    fn quoting_matches_go() {
        assert_eq!(quote("abc"), r#""abc""#);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\nb\tc\u{7}"), r#""a\nb\tc\a""#);
        assert_eq!(quote("\u{1}\u{7f}"), r#""\x01\x7f""#);
        assert_eq!(quote("héllo µs"), "\"héllo µs\"");
        assert_eq!(quote("\u{200b}"), r#""\u200b""#);
        assert_eq!(quote_rune('x'), "'x'");
        assert_eq!(quote_rune('\''), r"'\''");
        assert_eq!(backquote("foo"), "`foo`");
        assert_eq!(backquote("a`b"), r#""a`b""#);
    }
}
