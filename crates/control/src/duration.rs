//! Go's `time.Duration`: parsing as `time.ParseDuration`, rendering as `Duration.String()`,
//! and the state file's integer-nanosecond encoding.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DurationError;

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// Go's largest magnitude: one more than `i64::MAX`, reachable only by negative durations.
const LIMIT: u64 = 1 << 63;

/// A signed number of nanoseconds with Go's text forms (`1m30s`, `500ms`, `1.5h`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// The zero duration.
    pub const ZERO: GoDuration = GoDuration(0);

    /// Parses a duration exactly as Go's `time.ParseDuration` does, error messages included.
    pub fn parse(text: &str) -> Result<GoDuration, DurationError> {
        let invalid = || DurationError::Invalid {
            quoted: go_quote(text),
        };
        let mut rest = text.as_bytes();
        let mut negative = false;
        if let Some(&sign @ (b'-' | b'+')) = rest.first() {
            negative = sign == b'-';
            rest = &rest[1..];
        }
        // Go accepts a bare "0" (with or without sign) as the only unit-less value.
        if rest == b"0" {
            return Ok(GoDuration(0));
        }
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !rest.is_empty() {
            if !(rest[0] == b'.' || rest[0].is_ascii_digit()) {
                return Err(invalid());
            }
            let before = rest.len();
            let (whole, after_int) = leading_int(rest).ok_or_else(invalid)?;
            rest = after_int;
            let had_int = before != rest.len();

            let mut fraction = 0u64;
            let mut scale = 1f64;
            let mut had_fraction = false;
            if rest.first() == Some(&b'.') {
                rest = &rest[1..];
                let before = rest.len();
                let (f, s, after) = leading_fraction(rest);
                fraction = f;
                scale = s;
                rest = after;
                had_fraction = before != rest.len();
            }
            if !had_int && !had_fraction {
                return Err(invalid());
            }

            let unit_len = rest
                .iter()
                .position(|&c| c == b'.' || c.is_ascii_digit())
                .unwrap_or(rest.len());
            if unit_len == 0 {
                return Err(DurationError::MissingUnit {
                    quoted: go_quote(text),
                });
            }
            let (unit_bytes, after_unit) = rest.split_at(unit_len);
            rest = after_unit;
            let unit = unit_value(unit_bytes).ok_or_else(|| DurationError::UnknownUnit {
                unit: go_quote_bytes(unit_bytes),
                quoted: go_quote(text),
            })?;

            if whole > LIMIT / unit {
                return Err(invalid());
            }
            let mut value = whole * unit;
            if fraction > 0 {
                // Go uses float64 here so fractions of hours stay nanosecond-accurate;
                // the product is at most 3.6e12, well inside f64's exact range.
                value += (fraction as f64 * (unit as f64 / scale)) as u64;
                if value > LIMIT {
                    return Err(invalid());
                }
            }
            total = total.checked_add(value).ok_or_else(invalid)?;
            if total > LIMIT {
                return Err(invalid());
            }
        }
        if negative {
            // total <= 2^63, so the wrapping negation maps 2^63 to i64::MIN exactly.
            return Ok(GoDuration((total as i64).wrapping_neg()));
        }
        if total > i64::MAX as u64 {
            return Err(invalid());
        }
        Ok(GoDuration(total as i64))
    }

    /// Converts to a std duration; negative durations become zero.
    pub fn to_std(self) -> std::time::Duration {
        if self.0 <= 0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_nanos(self.0 as u64)
        }
    }

    /// Converts from a std duration, saturating at Go's maximum (about 292 years).
    pub fn from_std(duration: std::time::Duration) -> GoDuration {
        GoDuration(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
    }

    /// A duration of whole seconds (saturating).
    pub fn from_secs(secs: i64) -> GoDuration {
        GoDuration(secs.saturating_mul(SECOND as i64))
    }

    /// A duration of whole milliseconds (saturating).
    pub fn from_millis(millis: i64) -> GoDuration {
        GoDuration(millis.saturating_mul(MILLISECOND as i64))
    }

    /// The number of nanoseconds.
    pub fn as_nanos(self) -> i64 {
        self.0
    }

    /// True when the duration is zero or negative.
    pub fn is_zero_or_negative(self) -> bool {
        self.0 <= 0
    }
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        GoDuration::parse(text)
    }
}

impl From<std::time::Duration> for GoDuration {
    fn from(duration: std::time::Duration) -> Self {
        GoDuration::from_std(duration)
    }
}

/// Consumes leading ASCII digits; `None` when the value exceeds 2^63 (Go's overflow check).
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if value > LIMIT / 10 {
            return None;
        }
        value = value * 10 + u64::from(s[i] - b'0');
        if value > LIMIT {
            return None;
        }
        i += 1;
    }
    Some((value, &s[i..]))
}

/// Consumes fraction digits; on overflow it keeps consuming but stops adding precision, as Go does.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let mut value: u64 = 0;
    let mut scale = 1f64;
    let mut overflow = false;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflow {
            if value > (LIMIT - 1) / 10 {
                overflow = true;
            } else {
                let next = value * 10 + u64::from(s[i] - b'0');
                if next > LIMIT {
                    overflow = true;
                } else {
                    value = next;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (value, scale, &s[i..])
}

fn unit_value(unit: &[u8]) -> Option<u64> {
    Some(match unit {
        b"ns" => NANOSECOND,
        // "µs" with U+00B5 (micro sign) and U+03BC (Greek mu).
        b"us" | b"\xC2\xB5s" | b"\xCE\xBCs" => MICROSECOND,
        b"ms" => MILLISECOND,
        b"s" => SECOND,
        b"m" => MINUTE,
        b"h" => HOUR,
        _ => return None,
    })
}

/// Quotes like Go's `time` package: non-ASCII and control bytes become `\xNN`.
pub(crate) fn go_quote(s: &str) -> String {
    go_quote_bytes(s.as_bytes())
}

fn go_quote_bytes(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        if !(b' '..0x80).contains(&b) {
            out.push_str("\\x");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        } else {
            if b == b'"' || b == b'\\' {
                out.push('\\');
            }
            out.push(char::from(b));
        }
    }
    out.push('"');
    out
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negative = self.0 < 0;
        let mut u = self.0.unsigned_abs();
        if u == 0 {
            return f.write_str("0s");
        }
        let mut out = String::with_capacity(24);
        if negative {
            out.push('-');
        }
        if u < SECOND {
            // A single unit with the smallest integer part.
            let (precision, unit) = if u < MICROSECOND {
                (0, "ns")
            } else if u < MILLISECOND {
                (3, "µs")
            } else {
                (6, "ms")
            };
            let (whole, frac) = split_fraction(u, precision);
            out.push_str(&whole.to_string());
            out.push_str(&frac);
            out.push_str(unit);
        } else {
            let (whole_secs, frac) = split_fraction(u, 9);
            u = whole_secs;
            let secs = u % 60;
            u /= 60;
            if u > 0 {
                let minutes = u % 60;
                let hours = u / 60;
                if hours > 0 {
                    out.push_str(&hours.to_string());
                    out.push('h');
                }
                out.push_str(&minutes.to_string());
                out.push('m');
            }
            out.push_str(&secs.to_string());
            out.push_str(&frac);
            out.push('s');
        }
        f.write_str(&out)
    }
}

/// Splits `value` into its integer part and `.digits` (trailing zeros trimmed, empty if none),
/// treating the last `precision` decimal digits as the fraction.
fn split_fraction(value: u64, precision: u32) -> (u64, String) {
    if precision == 0 {
        return (value, String::new());
    }
    let divisor = 10u64.pow(precision);
    let whole = value / divisor;
    let frac = value % divisor;
    if frac == 0 {
        return (whole, String::new());
    }
    let digits = format!("{frac:0width$}", width = precision as usize);
    (whole, format!(".{}", digits.trim_end_matches('0')))
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i64::deserialize(deserializer).map(GoDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> i64 {
        match GoDuration::parse(text) {
            Ok(d) => d.0,
            Err(e) => panic!("{text:?} failed: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match GoDuration::parse(text) {
            Ok(d) => panic!("{text:?} unexpectedly parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_like_go() {
        let s = SECOND as i64;
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("5s", 5 * s),
            ("30s", 30 * s),
            ("1478s", 1478 * s),
            ("-5s", -5 * s),
            ("+5s", 5 * s),
            ("-0s", 0),
            ("0s", 0),
            ("5.0s", 5 * s),
            ("5.6s", 5 * s + 600 * MILLISECOND as i64),
            ("5.s", 5 * s),
            (".5s", s / 2),
            ("1.0s", s),
            ("1.00s", s),
            ("1.004s", s + 4 * MILLISECOND as i64),
            ("1.0040s", s + 4 * MILLISECOND as i64),
            ("100.00100s", 100 * s + MILLISECOND as i64),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14 * s),
            ("15m", 15 * 60 * s),
            ("16h", 16 * 3600 * s),
            ("3h30m", (3 * 3600 + 30 * 60) * s),
            ("10.5s4m", 4 * 60 * s + 10 * s + s / 2),
            ("-2m3.4s", -(2 * 60 * s + 3 * s + 400 * MILLISECOND as i64)),
            ("1h2m3s4ms5us6ns", 3600 * s + 120 * s + 3 * s + 4_005_006),
            (
                "39h9m14.425s",
                (39 * 3600 + 9 * 60 + 14) * s + 425 * MILLISECOND as i64,
            ),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 20 * 60 * s),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 6 * 60 * s),
            (
                "0.830103483285477580700h",
                49 * 60 * s + 48 * s + 372_539_827,
            ),
            ("1500ms", 1_500_000_000),
        ];
        for &(text, want) in cases {
            assert_eq!(ok(text), want, "parsing {text:?}");
        }
    }

    #[test]
    fn errors_match_go_messages() {
        assert_eq!(err("5"), r#"time: missing unit in duration "5""#);
        assert_eq!(err("5x"), r#"time: unknown unit "x" in duration "5x""#);
        assert_eq!(err("abc"), r#"time: invalid duration "abc""#);
        assert_eq!(err(""), r#"time: invalid duration """#);
        assert_eq!(err("3"), r#"time: missing unit in duration "3""#);
        assert_eq!(err("-"), r#"time: invalid duration "-""#);
        assert_eq!(err("s"), r#"time: invalid duration "s""#);
        assert_eq!(err("."), r#"time: invalid duration ".""#);
        assert_eq!(err("-."), r#"time: invalid duration "-.""#);
        assert_eq!(err(".s"), r#"time: invalid duration ".s""#);
        assert_eq!(err("+.s"), r#"time: invalid duration "+.s""#);
        assert_eq!(err("1d"), r#"time: unknown unit "d" in duration "1d""#);
        assert_eq!(
            err("1.5 s"),
            r#"time: unknown unit " s" in duration "1.5 s""#
        );
        assert_eq!(err("1s "), r#"time: unknown unit "s " in duration "1s ""#);
        assert_eq!(
            err("1s-2s"),
            r#"time: unknown unit "s-" in duration "1s-2s""#
        );
        assert_eq!(err("\"s"), r#"time: invalid duration "\"s""#);
        assert_eq!(
            err("3000000h"),
            r#"time: invalid duration "3000000h""#,
            "overflow"
        );
        assert_eq!(
            err("9223372036854775808ns"),
            r#"time: invalid duration "9223372036854775808ns""#
        );
        assert_eq!(
            err("9223372036854775.808us"),
            r#"time: invalid duration "9223372036854775.808us""#
        );
        assert_eq!(
            err("9223372036854ms775us808ns"),
            r#"time: invalid duration "9223372036854ms775us808ns""#
        );
        assert_eq!(
            err("-9223372036854775809ns"),
            r#"time: invalid duration "-9223372036854775809ns""#
        );
        assert_eq!(
            err("99999999999999999999ns"),
            r#"time: invalid duration "99999999999999999999ns""#
        );
        // Non-ASCII and control bytes are escaped byte by byte.
        assert_eq!(
            err("3\u{00e9}"),
            r#"time: unknown unit "\xc3\xa9" in duration "3\xc3\xa9""#
        );
        assert_eq!(err("\t1s"), r#"time: invalid duration "\x091s""#);
    }

    #[test]
    fn renders_like_go() {
        let s = SECOND as i64;
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (10, "10ns"),
            (1_100, "1.1µs"),
            (250_000, "250µs"),
            (2_200_000, "2.2ms"),
            (1_500_000, "1.5ms"),
            (500_000_000, "500ms"),
            (s, "1s"),
            (3 * s + s / 2, "3.5s"),
            (30 * s, "30s"),
            (90 * s, "1m30s"),
            (60 * s, "1m0s"),
            (3600 * s, "1h0m0s"),
            (3605 * s, "1h0m5s"),
            (4 * 60 * s + 5 * s + 1_000_000, "4m5.001s"),
            (5 * 3600 * s + 6 * 60 * s + 7 * s + 1, "5h6m7.000000001s"),
            ((2 * 3600 + 45 * 60) * s + s / 2, "2h45m0.5s"),
            (-s, "-1s"),
            (-1, "-1ns"),
            (-250_000, "-250µs"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for &(nanos, want) in cases {
            assert_eq!(GoDuration(nanos).to_string(), want, "rendering {nanos}");
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let values = [
            0,
            1,
            999,
            1_000,
            123_456,
            1_500_000,
            999_999_999,
            1_000_000_000,
            90_000_000_000,
            3_600_000_000_001,
            -42_000_000_000,
            i64::MAX,
            i64::MIN,
        ];
        for nanos in values {
            let text = GoDuration(nanos).to_string();
            assert_eq!(GoDuration::parse(&text).map(|d| d.0), Ok(nanos), "{text}");
        }
    }

    #[test]
    fn std_conversions() {
        assert_eq!(GoDuration(-5).to_std(), std::time::Duration::ZERO);
        assert_eq!(
            GoDuration::from_secs(3).to_std(),
            std::time::Duration::from_secs(3)
        );
        assert_eq!(GoDuration::from_millis(1500).to_string(), "1.5s");
        assert_eq!(
            GoDuration::from_std(std::time::Duration::from_millis(250)),
            GoDuration(250_000_000)
        );
        assert_eq!(
            GoDuration::from_std(std::time::Duration::MAX),
            GoDuration(i64::MAX)
        );
        assert_eq!(GoDuration::from_secs(i64::MAX), GoDuration(i64::MAX));
    }

    #[test]
    fn serde_uses_integer_nanoseconds() {
        let json = serde_json::to_string(&GoDuration(1_000_000_000)).unwrap();
        assert_eq!(json, "1000000000");
        let back: GoDuration = serde_json::from_str("-30000000000").unwrap();
        assert_eq!(back, GoDuration::from_secs(-30));
        assert!(serde_json::from_str::<GoDuration>("\"1s\"").is_err());
        assert!(serde_json::from_str::<GoDuration>("1.5").is_err());
    }
}
