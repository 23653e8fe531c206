//! One CSV record, read the way Go's `encoding/csv` reads it: pflag's string-slice flags parse
//! each occurrence as a CSV record, so `--host=a,b` is two hosts and `--host='"a,b"'` is one.

use std::fmt;

/// Why a value is not a valid CSV record; the Display text is Go's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CsvError {
    /// The value holds only line breaks, so there is no record at all (Go's `io.EOF`).
    Eof,
    /// A quote inside an unquoted field, or a quoted field that is not closed properly.
    Parse {
        /// Line on which the record starts (1-based).
        start_line: usize,
        /// Line of the error (1-based).
        line: usize,
        /// Byte column of the error (1-based).
        column: usize,
        /// `true` for a bare quote in an unquoted field.
        bare_quote: bool,
    },
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvError::Eof => f.write_str("EOF"),
            CsvError::Parse {
                start_line,
                line,
                column,
                bare_quote,
            } => {
                let why = if *bare_quote {
                    "bare \" in non-quoted field"
                } else {
                    "extraneous or missing \" in quoted-field"
                };
                if start_line != line {
                    write!(f, "record on line {start_line}; ")?;
                }
                write!(f, "parse error on line {line}, column {column}: {why}")
            }
        }
    }
}

/// Line-by-line reader over the value, mirroring Go's `readLine`.
struct Lines<'a> {
    rest: &'a [u8],
    number: usize,
}

impl<'a> Lines<'a> {
    /// The next line with its `\n` (a `\r\n` ending becomes `\n`; a final `\r` is dropped), or
    /// `None` at the end. Every call counts a line, as Go's does.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        self.number += 1;
        if self.rest.is_empty() {
            return None;
        }
        let (mut line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => (self.rest[..=i].to_vec(), &self.rest[i + 1..]),
            None => {
                let mut line = self.rest.to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                (line, &self.rest[self.rest.len()..])
            }
        };
        self.rest = rest;
        let n = line.len();
        if n >= 2 && line[n - 2] == b'\r' && line[n - 1] == b'\n' {
            line.truncate(n - 1);
            line[n - 2] = b'\n';
        }
        Some(line)
    }
}

fn newline_len(line: &[u8]) -> usize {
    usize::from(line.last() == Some(&b'\n'))
}

/// Parses a string-slice flag value: the empty string yields no values, anything else is read
/// as exactly one CSV record (anything after the first record is ignored, as in pflag).
pub(crate) fn read_record(value: &str) -> Result<Vec<String>, CsvError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let mut lines = Lines {
        rest: value.as_bytes(),
        number: 0,
    };
    // Skip empty lines before the record.
    let mut line = loop {
        match lines.next_line() {
            None => return Err(CsvError::Eof),
            Some(l) if l.len() == newline_len(&l) => continue,
            Some(l) => break l,
        }
    };
    let record_line = lines.number;
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut pos_line = lines.number;
    let mut col = 1usize;
    let mut at = 0usize;
    let parse_error = |line: usize, column: usize, bare_quote: bool| CsvError::Parse {
        start_line: record_line,
        line,
        column,
        bare_quote,
    };

    'fields: loop {
        let rest = &line[at..];
        if rest.first() != Some(&b'"') {
            // Unquoted field: up to the next comma or the end of the line.
            let comma = rest.iter().position(|&b| b == b',');
            let end = comma.unwrap_or(rest.len() - newline_len(rest));
            if let Some(j) = rest[..end].iter().position(|&b| b == b'"') {
                return Err(parse_error(lines.number, col + j, true));
            }
            fields.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            match comma {
                Some(i) => {
                    at += i + 1;
                    col += i + 1;
                    continue 'fields;
                }
                None => break 'fields,
            }
        }
        // Quoted field.
        at += 1;
        col += 1;
        field.clear();
        loop {
            let rest = &line[at..];
            if let Some(i) = rest.iter().position(|&b| b == b'"') {
                field.extend_from_slice(&rest[..i]);
                at += i + 1;
                col += i + 1;
                let rest = &line[at..];
                match rest.first() {
                    Some(b'"') => {
                        field.push(b'"');
                        at += 1;
                        col += 1;
                    }
                    Some(b',') => {
                        at += 1;
                        col += 1;
                        fields.push(String::from_utf8_lossy(&field).into_owned());
                        continue 'fields;
                    }
                    _ if newline_len(rest) == rest.len() => {
                        fields.push(String::from_utf8_lossy(&field).into_owned());
                        break 'fields;
                    }
                    _ => return Err(parse_error(lines.number, col - 1, false)),
                }
            } else if !rest.is_empty() {
                // The quoted field continues on the next line.
                field.extend_from_slice(rest);
                col += rest.len();
                match lines.next_line() {
                    Some(next) => {
                        if !next.is_empty() {
                            pos_line += 1;
                            col = 1;
                        }
                        line = next;
                    }
                    None => line = Vec::new(),
                }
                at = 0;
            } else {
                // End of input inside a quoted field.
                return Err(parse_error(pos_line, col, false));
            }
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> Vec<String> {
        read_record(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
    }

    #[test]
    fn splits_on_commas() {
        assert_eq!(ok(""), Vec::<String>::new());
        assert_eq!(ok("a"), ["a"]);
        assert_eq!(ok("a,b"), ["a", "b"]);
        assert_eq!(ok("a.test,"), ["a.test", ""]);
        assert_eq!(ok(","), ["", ""]);
        assert_eq!(ok(" a , b "), [" a ", " b "]);
    }

    #[test]
    fn quotes_follow_csv_rules() {
        assert_eq!(ok(r#""a,b""#), ["a,b"]);
        assert_eq!(ok(r#""a,b",c"#), ["a,b", "c"]);
        assert_eq!(ok(r#""say ""hi""""#), [r#"say "hi""#]);
        assert_eq!(ok(r#""""#), [""]);
        assert_eq!(ok("\"a\nb\""), ["a\nb"]);
    }

    #[test]
    fn reads_only_the_first_record() {
        assert_eq!(ok("a,b\nc"), ["a", "b"]);
        assert_eq!(ok("\n\na"), ["a"]);
        assert_eq!(ok("a\r\n"), ["a"]);
        assert_eq!(ok("a\r"), ["a"]);
    }

    #[test]
    fn errors_match_go() {
        assert_eq!(
            read_record(r#"a"b"#).unwrap_err().to_string(),
            r#"parse error on line 1, column 2: bare " in non-quoted field"#
        );
        assert_eq!(
            read_record(r#"x,a"b"#).unwrap_err().to_string(),
            r#"parse error on line 1, column 4: bare " in non-quoted field"#
        );
        assert_eq!(
            read_record(r#""a"b"#).unwrap_err().to_string(),
            r#"parse error on line 1, column 3: extraneous or missing " in quoted-field"#
        );
        assert_eq!(
            read_record(r#""abc"#).unwrap_err().to_string(),
            r#"parse error on line 1, column 5: extraneous or missing " in quoted-field"#
        );
        assert_eq!(read_record("\n").unwrap_err(), CsvError::Eof);
        assert_eq!(read_record("\n").unwrap_err().to_string(), "EOF");
    }
}
