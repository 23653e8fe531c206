//! A declarative flag table and a parser with pflag's semantics (upstream parses its command line
//! with spf13/pflag): `--flag value`, `--flag=value`, bare booleans, `-h` style shorthands,
//! interspersed positionals, `--` to end flags, CSV string slices, Go ints and Go durations.

use kamal_control::GoDuration;

use super::csv;
use super::error::CliError;
use super::goparse;

/// A flag's typed value (also used for its default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// `bool`: bare `--flag` means true.
    Bool(bool),
    /// `int` / `int64` (Go integer literal syntax).
    Int(i64),
    /// `string`.
    Str(String),
    /// `strings`: every occurrence is one CSV record, appended.
    Strings(Vec<String>),
    /// `duration` (Go syntax).
    Duration(GoDuration),
}

impl Value {
    /// The type name shown in help (pflag's `UnquoteUsage`); booleans show none.
    fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "",
            Value::Int(_) => "int",
            Value::Str(_) => "string",
            Value::Strings(_) => "strings",
            Value::Duration(_) => "duration",
        }
    }

    /// The ` (default …)` suffix of the help line, empty when the default is the zero value.
    fn default_suffix(&self) -> String {
        match self {
            Value::Bool(false) | Value::Int(0) | Value::Duration(GoDuration(0)) => String::new(),
            Value::Str(s) if s.is_empty() => String::new(),
            Value::Strings(v) if v.is_empty() => String::new(),
            Value::Bool(true) => " (default true)".to_string(),
            Value::Int(i) => format!(" (default {i})"),
            Value::Str(s) => format!(" (default {})", kamal_control::quote::quote(s)),
            Value::Strings(v) => format!(" (default [{}])", v.join(",")),
            Value::Duration(d) => format!(" (default {d})"),
        }
    }
}

/// One flag of a command.
#[derive(Debug, Clone)]
pub(crate) struct Flag {
    /// Long name, without dashes.
    pub(crate) name: &'static str,
    /// One-letter shorthand (`-h`), if any.
    pub(crate) shorthand: Option<u8>,
    /// Help text.
    pub(crate) usage: String,
    /// Default value; also fixes the flag's type.
    pub(crate) default: Value,
}

impl Flag {
    /// A flag without shorthand.
    pub(crate) fn new(name: &'static str, default: Value, usage: impl Into<String>) -> Flag {
        Flag {
            name,
            shorthand: None,
            usage: usage.into(),
            default,
        }
    }

    fn is_bool(&self) -> bool {
        matches!(self.default, Value::Bool(_))
    }

    /// How the flag is named in `invalid argument` errors.
    fn display_name(&self) -> String {
        match self.shorthand {
            Some(c) => format!("-{}, --{}", char::from(c), self.name),
            None => format!("--{}", self.name),
        }
    }
}

/// The flags of one command; [`FlagSet::parse`] yields the values.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlagSet {
    flags: Vec<Flag>,
}

/// The outcome of parsing: a value per flag, whether it was given, and the positionals.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    names: Vec<&'static str>,
    values: Vec<Value>,
    changed: Vec<bool>,
    /// Positional arguments, in order.
    pub(crate) args: Vec<String>,
}

impl FlagSet {
    /// Adds a flag.
    pub(crate) fn add(&mut self, flag: Flag) {
        self.flags.push(flag);
    }

    /// Replaces a flag's default (for defaults that come from the environment).
    pub(crate) fn set_default(&mut self, name: &str, default: Value) {
        if let Some(flag) = self.flags.iter_mut().find(|f| f.name == name) {
            flag.default = default;
        }
    }

    /// Whether a flag with this long name exists.
    pub(crate) fn lookup(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.flags.iter().position(|f| f.name == name)
    }

    fn short_index(&self, c: u8) -> Option<usize> {
        self.flags.iter().position(|f| f.shorthand == Some(c))
    }

    /// Whether the long flag takes no value when given bare (a boolean). Unknown flags count as
    /// taking a value, which is what cobra assumes while looking for the subcommand.
    pub(crate) fn is_bool_flag(&self, name: &str) -> bool {
        self.lookup(name).is_some_and(Flag::is_bool)
    }

    /// Same as [`FlagSet::is_bool_flag`] for a shorthand (the first byte of `name`).
    pub(crate) fn is_bool_shorthand(&self, name: &str) -> bool {
        name.bytes()
            .next()
            .and_then(|c| self.short_index(c))
            .is_some_and(|i| self.flags[i].is_bool())
    }

    /// Parses the arguments like pflag's `FlagSet.Parse` with interspersed positionals.
    pub(crate) fn parse(&self, arguments: &[String]) -> Result<Parsed, CliError> {
        let mut parsed = Parsed {
            names: self.flags.iter().map(|f| f.name).collect(),
            values: self.flags.iter().map(|f| f.default.clone()).collect(),
            changed: vec![false; self.flags.len()],
            args: Vec::new(),
        };
        let mut rest = arguments;
        while let Some((arg, tail)) = rest.split_first() {
            rest = tail;
            let bytes = arg.as_bytes();
            if bytes.len() < 2 || bytes[0] != b'-' {
                parsed.args.push(arg.clone());
                continue;
            }
            if bytes[1] == b'-' {
                if bytes.len() == 2 {
                    // `--` ends the flags; everything after is positional.
                    parsed.args.extend(rest.iter().cloned());
                    break;
                }
                rest = self.parse_long(arg, rest, &mut parsed)?;
            } else {
                rest = self.parse_shorts(arg, rest, &mut parsed)?;
            }
        }
        Ok(parsed)
    }

    fn parse_long<'a>(
        &self,
        arg: &str,
        rest: &'a [String],
        parsed: &mut Parsed,
    ) -> Result<&'a [String], CliError> {
        let body = &arg[2..];
        if body.starts_with(['-', '=']) {
            return Err(CliError::BadFlagSyntax(arg.to_string()));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(i) = self.index(name) else {
            return Err(CliError::UnknownFlag(name.to_string()));
        };
        let flag = &self.flags[i];
        let (value, rest) = match inline {
            Some(v) => (v, rest),
            None if flag.is_bool() => ("true", rest),
            None => match rest.split_first() {
                Some((v, tail)) => (v.as_str(), tail),
                None => return Err(CliError::FlagNeedsArgument(name.to_string())),
            },
        };
        self.set(i, value, parsed)?;
        Ok(rest)
    }

    fn parse_shorts<'a>(
        &self,
        arg: &str,
        mut rest: &'a [String],
        parsed: &mut Parsed,
    ) -> Result<&'a [String], CliError> {
        let all = &arg[1..];
        let mut shorts = all.as_bytes();
        while let Some(&c) = shorts.first() {
            let Some(i) = self.short_index(c) else {
                return Err(CliError::UnknownShorthandFlag {
                    flag: char::from(c),
                    shorthands: String::from_utf8_lossy(shorts).into_owned(),
                });
            };
            let flag = &self.flags[i];
            let value: String;
            if shorts.len() > 2 && shorts[1] == b'=' {
                value = String::from_utf8_lossy(&shorts[2..]).into_owned();
                shorts = &[];
            } else if flag.is_bool() {
                value = "true".to_string();
                shorts = &shorts[1..];
            } else if shorts.len() > 1 {
                value = String::from_utf8_lossy(&shorts[1..]).into_owned();
                shorts = &[];
            } else if let Some((v, tail)) = rest.split_first() {
                value = v.clone();
                rest = tail;
                shorts = &[];
            } else {
                return Err(CliError::ShorthandFlagNeedsArgument {
                    flag: char::from(c),
                    shorthands: String::from_utf8_lossy(shorts).into_owned(),
                });
            }
            self.set(i, &value, parsed)?;
        }
        Ok(rest)
    }

    fn set(&self, i: usize, raw: &str, parsed: &mut Parsed) -> Result<(), CliError> {
        let flag = &self.flags[i];
        let invalid = |cause: String| CliError::InvalidFlagValue {
            flag: flag.display_name(),
            value: raw.to_string(),
            cause,
        };
        let value = match &flag.default {
            Value::Bool(_) => {
                Value::Bool(goparse::parse_bool(raw).map_err(|e| invalid(e.to_string()))?)
            }
            Value::Int(_) => {
                Value::Int(goparse::parse_int_base0(raw).map_err(|e| invalid(e.to_string()))?)
            }
            Value::Str(_) => Value::Str(raw.to_string()),
            Value::Duration(_) => {
                Value::Duration(GoDuration::parse(raw).map_err(|e| invalid(e.to_string()))?)
            }
            Value::Strings(_) => {
                let mut record = csv::read_record(raw).map_err(|e| invalid(e.to_string()))?;
                // The first occurrence replaces the default, later ones append (pflag).
                match (&mut parsed.values[i], parsed.changed[i]) {
                    (Value::Strings(existing), true) => {
                        existing.append(&mut record);
                        return Ok(());
                    }
                    _ => Value::Strings(record),
                }
            }
        };
        parsed.values[i] = value;
        parsed.changed[i] = true;
        Ok(())
    }

    /// The flag lines of the help text, like pflag's `FlagUsages` (sorted by name, aligned),
    /// without the final newline.
    pub(crate) fn usages(&self) -> String {
        let mut sorted: Vec<&Flag> = self.flags.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(b.name));
        let lines: Vec<(String, String)> = sorted
            .iter()
            .map(|flag| {
                let mut left = match flag.shorthand {
                    Some(c) => format!("  -{}, --{}", char::from(c), flag.name),
                    None => format!("      --{}", flag.name),
                };
                let type_name = flag.default.type_name();
                if !type_name.is_empty() {
                    left.push(' ');
                    left.push_str(type_name);
                }
                (
                    left,
                    format!("{}{}", flag.usage, flag.default.default_suffix()),
                )
            })
            .collect();
        let width = lines.iter().map(|(left, _)| left.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (left, right) in &lines {
            out.push_str(left);
            // Three spaces after the longest name, as pflag aligns them.
            out.push_str(&" ".repeat(width - left.len() + 3));
            out.push_str(right);
            out.push('\n');
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out
    }
}

impl Parsed {
    fn position(&self, name: &str) -> usize {
        // Flag names are compile-time constants of this module's callers; a miss is a bug that
        // the tests of every command catch.
        self.names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("flag --{name} is not defined"))
    }

    /// Whether the flag was given on the command line (pflag's `Changed`).
    pub(crate) fn changed(&self, name: &str) -> bool {
        self.changed[self.position(name)]
    }

    /// A boolean flag's value.
    pub(crate) fn bool(&self, name: &str) -> bool {
        matches!(self.values[self.position(name)], Value::Bool(true))
    }

    /// An integer flag's value.
    pub(crate) fn int(&self, name: &str) -> i64 {
        match self.values[self.position(name)] {
            Value::Int(i) => i,
            _ => panic!("flag --{name} is not an int"),
        }
    }

    /// A string flag's value.
    pub(crate) fn string(&self, name: &str) -> String {
        match &self.values[self.position(name)] {
            Value::Str(s) => s.clone(),
            _ => panic!("flag --{name} is not a string"),
        }
    }

    /// A string-slice flag's values.
    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        match &self.values[self.position(name)] {
            Value::Strings(v) => v.clone(),
            _ => panic!("flag --{name} is not a string slice"),
        }
    }

    /// A duration flag's value.
    pub(crate) fn duration(&self, name: &str) -> GoDuration {
        match self.values[self.position(name)] {
            Value::Duration(d) => d,
            _ => panic!("flag --{name} is not a duration"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> FlagSet {
        let mut fs = FlagSet::default();
        fs.add(Flag::new(
            "target",
            Value::Strings(vec![]),
            "Target host(s) to deploy",
        ));
        fs.add(Flag::new("tls", Value::Bool(false), "Configure TLS"));
        fs.add(Flag::new("strip", Value::Bool(true), "Strip"));
        fs.add(Flag::new(
            "buffer-memory",
            Value::Int(1048576),
            "Max size of memory buffer",
        ));
        fs.add(Flag::new(
            "deploy-timeout",
            Value::Duration(GoDuration::from_secs(30)),
            "Wait",
        ));
        fs.add(Flag::new("message", Value::Str(String::new()), "Message"));
        fs.add(Flag::new("path", Value::Str("/up".into()), "Path"));
        fs.add(Flag {
            name: "help",
            shorthand: Some(b'h'),
            usage: "help for x".into(),
            default: Value::Bool(false),
        });
        fs
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn err(list: &[&str]) -> String {
        set().parse(&args(list)).unwrap_err().to_string()
    }

    #[test]
    fn long_flags_take_values_both_ways() {
        let p = set()
            .parse(&args(&[
                "svc",
                "--message",
                "hi",
                "--path=/x",
                "--message=bye",
            ]))
            .unwrap();
        assert_eq!(p.args, ["svc"]);
        assert_eq!(p.string("message"), "bye", "last one wins");
        assert_eq!(p.string("path"), "/x");
        assert!(p.changed("message"));
        assert!(!p.changed("tls"));
    }

    #[test]
    fn booleans_are_bare_or_with_equals_only() {
        let p = set().parse(&args(&["--tls", "--strip=false"])).unwrap();
        assert!(p.bool("tls"));
        assert!(!p.bool("strip"));
        let p = set().parse(&args(&["--tls", "false"])).unwrap();
        assert!(p.bool("tls"));
        assert_eq!(
            p.args,
            ["false"],
            "the value after a bare boolean is a positional"
        );
        for spelling in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(set()
                .parse(&args(&[&format!("--tls={spelling}")]))
                .unwrap()
                .bool("tls"));
        }
        for spelling in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!set()
                .parse(&args(&[&format!("--strip={spelling}")]))
                .unwrap()
                .bool("strip"));
        }
    }

    #[test]
    fn slices_split_csv_and_append() {
        let p = set()
            .parse(&args(&[
                "--target=a,b",
                "--target",
                "c",
                "--target=",
                r#"--target="d,e""#,
            ]))
            .unwrap();
        assert_eq!(p.strings("target"), ["a", "b", "c", "d,e"]);
        let p = set().parse(&args(&["--target="])).unwrap();
        assert!(p.changed("target"));
        assert!(p.strings("target").is_empty());
    }

    #[test]
    fn ints_and_durations_use_go_syntax() {
        let p = set()
            .parse(&args(&[
                "--buffer-memory=0x10",
                "--deploy-timeout",
                "1m30s",
            ]))
            .unwrap();
        assert_eq!(p.int("buffer-memory"), 16);
        assert_eq!(p.duration("deploy-timeout"), GoDuration::from_secs(90));
        let p = set().parse(&args(&["--buffer-memory", "010"])).unwrap();
        assert_eq!(p.int("buffer-memory"), 8);
    }

    #[test]
    fn double_dash_ends_flags_and_single_dash_is_positional() {
        let p = set().parse(&args(&["-", "--", "--tls", "x"])).unwrap();
        assert_eq!(p.args, ["-", "--tls", "x"]);
        assert!(!p.bool("tls"));
    }

    #[test]
    fn shorthands_work_like_pflag() {
        assert!(set().parse(&args(&["-h"])).unwrap().bool("help"));
        assert!(!set().parse(&args(&["-h=false"])).unwrap().bool("help"));
        assert_eq!(err(&["-x"]), "unknown shorthand flag: 'x' in -x");
        assert_eq!(err(&["-hx"]), "unknown shorthand flag: 'x' in -x");
    }

    #[test]
    fn errors_have_pflags_texts() {
        assert_eq!(err(&["--bogus"]), "unknown flag: --bogus");
        assert_eq!(err(&["--bogus=1"]), "unknown flag: --bogus");
        assert_eq!(err(&["--target"]), "flag needs an argument: --target");
        assert_eq!(err(&["---x"]), "bad flag syntax: ---x");
        assert_eq!(err(&["--=x"]), "bad flag syntax: --=x");
        assert_eq!(
            err(&["--deploy-timeout", "5"]),
            r#"invalid argument "5" for "--deploy-timeout" flag: time: missing unit in duration "5""#
        );
        assert_eq!(
            err(&["--buffer-memory=1k"]),
            r#"invalid argument "1k" for "--buffer-memory" flag: strconv.ParseInt: parsing "1k": invalid syntax"#
        );
        assert_eq!(
            err(&["--tls=maybe"]),
            r#"invalid argument "maybe" for "--tls" flag: strconv.ParseBool: parsing "maybe": invalid syntax"#
        );
        assert_eq!(
            err(&["-h=maybe"]),
            r#"invalid argument "maybe" for "-h, --help" flag: strconv.ParseBool: parsing "maybe": invalid syntax"#
        );
        assert_eq!(
            err(&[r#"--target=a"b"#]),
            r#"invalid argument "a\"b" for "--target" flag: parse error on line 1, column 2: bare " in non-quoted field"#
        );
    }

    #[test]
    fn usages_are_aligned_like_pflag() {
        let want =
            "      --buffer-memory int         Max size of memory buffer (default 1048576)\n\
                    \x20     --deploy-timeout duration   Wait (default 30s)\n\
                    \x20 -h, --help                      help for x\n\
                    \x20     --message string            Message\n\
                    \x20     --path string               Path (default \"/up\")\n\
                    \x20     --strip                     Strip (default true)\n\
                    \x20     --target strings            Target host(s) to deploy\n\
                    \x20     --tls                       Configure TLS";
        assert_eq!(set().usages(), want);
    }
}
