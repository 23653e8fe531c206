//! The command tree and the parts of cobra's behaviour that are observable: how the subcommand is
//! found among the arguments, argument-count rules, required flags and flag groups, and the exact
//! layout of the help and usage texts.

use std::fmt::Write as _;

use super::error::CliError;
use super::flags::{Flag, FlagSet, Parsed, Value};

/// What a runnable command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `help [command]`.
    Help,
    /// `run`.
    Run,
    /// `deploy`.
    Deploy,
    /// `remove`.
    Remove,
    /// `pause`.
    Pause,
    /// `stop`.
    Stop,
    /// `resume`.
    Resume,
    /// `list`.
    List,
    /// `rollout deploy`.
    RolloutDeploy,
    /// `rollout set`.
    RolloutSet,
    /// `rollout stop`.
    RolloutStop,
}

/// How many positionals a command takes (cobra's `Args`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Positionals {
    /// Not declared: anything goes (the root checks for unknown subcommands instead).
    Any,
    /// Exactly this many.
    Exactly(usize),
    /// None at all.
    None,
}

/// One command of the tree.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    /// Name (first word of `use_line`).
    pub(crate) name: &'static str,
    /// cobra's `Use`, e.g. `deploy <service>`.
    pub(crate) use_line: &'static str,
    /// Other names.
    pub(crate) aliases: &'static [&'static str],
    /// One-line description.
    pub(crate) short: &'static str,
    /// Longer description shown by help instead of `short`, if not empty.
    pub(crate) long: String,
    /// The command's own flags (help and version flags are added when it runs).
    pub(crate) flags: FlagSet,
    /// Positional rule.
    pub(crate) positionals: Positionals,
    /// What it does; `None` for a command that only groups subcommands.
    pub(crate) action: Option<Action>,
    /// Subcommands, in the order upstream adds them (suggestions follow that order).
    pub(crate) children: Vec<Command>,
    /// Flags that must be given.
    pub(crate) required: &'static [&'static str],
    /// Flags that must be given together or not at all.
    pub(crate) together: &'static [&'static str],
    /// Flags of which at least one must be given.
    pub(crate) one_required: &'static [&'static str],
    /// Whether the root shows `--version`.
    pub(crate) version: Option<&'static str>,
    /// Whether this is the help command (listed, but never suggested).
    pub(crate) is_help: bool,
}

/// Minimum width of the command-name column in help listings (cobra's `minNamePadding`).
const MIN_NAME_PADDING: usize = 11;

impl Command {
    /// A command with no flags, positional rule `Any` and no action.
    pub(crate) fn new(name: &'static str, use_line: &'static str, short: &'static str) -> Self {
        Command {
            name,
            use_line,
            aliases: &[],
            short,
            long: String::new(),
            flags: FlagSet::default(),
            positionals: Positionals::Any,
            action: None,
            children: Vec::new(),
            required: &[],
            together: &[],
            one_required: &[],
            version: None,
            is_help: false,
        }
    }

    /// Adds a flag (builder style).
    pub(crate) fn flag(mut self, flag: Flag) -> Self {
        self.flags.add(flag);
        self
    }

    fn find_child(&self, word: &str) -> Option<&Command> {
        self.children
            .iter()
            .find(|c| c.name == word || c.aliases.contains(&word))
    }

    /// The flags in effect when the command runs: its own plus `-h/--help` (and `--version`).
    pub(crate) fn effective_flags(&self) -> FlagSet {
        let mut flags = self.flags.clone();
        flags.add(Flag {
            name: "help",
            shorthand: Some(b'h'),
            usage: format!("help for {}", self.name),
            default: Value::Bool(false),
        });
        if self.version.is_some() {
            flags.add(Flag {
                name: "version",
                shorthand: Some(b'v'),
                usage: format!("version for {}", self.name),
                default: Value::Bool(false),
            });
        }
        flags
    }

    fn is_available(&self) -> bool {
        !self.is_help && (self.action.is_some() || !self.children.is_empty())
    }
}

/// The chain of commands from the root to the one found.
pub(crate) type Chain<'a> = Vec<&'a Command>;

/// `kamal-proxy rollout deploy` for a chain.
pub(crate) fn command_path(chain: &[&Command]) -> String {
    chain.iter().map(|c| c.name).collect::<Vec<_>>().join(" ")
}

/// The words of `args` that are not flags or flag values, as cobra's `stripFlags` sees them
/// (with the command's own flags only: cobra adds the help flag later, so `--help` is taken
/// to consume the next word here).
fn strip_flags(args: &[String], flags: &FlagSet) -> Vec<String> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let s = &args[i];
        i += 1;
        if s == "--" {
            break;
        }
        if takes_separate_value(s, flags) {
            if args.len() - i <= 1 {
                break;
            }
            i += 1;
            continue;
        }
        if !s.is_empty() && !s.starts_with('-') {
            words.push(s.clone());
        }
    }
    words
}

fn takes_separate_value(s: &str, flags: &FlagSet) -> bool {
    if s.contains('=') {
        return false;
    }
    if let Some(name) = s.strip_prefix("--") {
        return !flags.is_bool_flag(name);
    }
    s.len() == 2 && s.starts_with('-') && !flags.is_bool_shorthand(&s[1..])
}

/// `args` without the first occurrence of the subcommand word (cobra's `argsMinusFirstX`).
fn remove_word(args: &[String], word: &str, flags: &FlagSet) -> Vec<String> {
    let mut pos = 0;
    while pos < args.len() {
        let s = &args[pos];
        if s == "--" {
            break;
        }
        if takes_separate_value(s, flags) {
            pos += 2;
            continue;
        }
        if !s.starts_with('-') && s == word {
            let mut out = args.to_vec();
            out.remove(pos);
            return out;
        }
        pos += 1;
    }
    args.to_vec()
}

/// Finds the command the arguments name (cobra's `Find`): returns the chain and the arguments
/// left for that command to parse. An unknown word given to the root is an error.
pub(crate) fn find<'a>(
    root: &'a Command,
    args: &[String],
) -> Result<(Chain<'a>, Vec<String>), CliError> {
    let mut chain = vec![root];
    let mut rest = args.to_vec();
    loop {
        let current = chain[chain.len() - 1];
        let words = strip_flags(&rest, &current.flags);
        let Some(first) = words.first() else { break };
        match current.find_child(first) {
            Some(child) => {
                rest = remove_word(&rest, first, &current.flags);
                chain.push(child);
            }
            None => break,
        }
    }
    let found = chain[chain.len() - 1];
    // Only a root with subcommands and no declared positional rule rejects unknown words here.
    if found.positionals == Positionals::Any && !found.children.is_empty() && chain.len() == 1 {
        if let Some(word) = strip_flags(&rest, &found.flags).first() {
            return Err(CliError::UnknownCommand {
                command: word.clone(),
                path: command_path(&chain),
                suggestions: suggestions(found, word),
            });
        }
    }
    Ok((chain, rest))
}

/// cobra's "Did you mean this?" block for an unknown word.
fn suggestions(parent: &Command, typed: &str) -> String {
    let lowered = typed.to_lowercase();
    let names: Vec<&str> = parent
        .children
        .iter()
        .filter(|c| c.is_available())
        .filter(|c| {
            levenshtein(&lowered, &c.name.to_lowercase()) <= 2
                || c.name.to_lowercase().starts_with(&lowered)
        })
        .map(|c| c.name)
        .collect();
    if names.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n\nDid you mean this?\n");
    for name in names {
        let _ = writeln!(out, "\t{name}");
    }
    out
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Checks the positional count (cobra's `ExactArgs` / `NoArgs`).
pub(crate) fn check_positionals(chain: &[&Command], args: &[String]) -> Result<(), CliError> {
    let command = chain[chain.len() - 1];
    match command.positionals {
        Positionals::Any => Ok(()),
        Positionals::Exactly(n) if args.len() == n => Ok(()),
        Positionals::Exactly(n) => Err(CliError::WrongArgumentCount {
            expected: n,
            received: args.len(),
        }),
        Positionals::None => match args.first() {
            None => Ok(()),
            Some(word) => Err(CliError::UnknownCommand {
                command: word.clone(),
                path: command_path(chain),
                suggestions: String::new(),
            }),
        },
    }
}

/// Checks required flags, then the flag groups (cobra's order).
pub(crate) fn check_required(command: &Command, parsed: &Parsed) -> Result<(), CliError> {
    let mut missing: Vec<String> = command
        .required
        .iter()
        .filter(|n| !parsed.changed(n))
        .map(|n| n.to_string())
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(CliError::RequiredFlagsMissing(missing));
    }
    if !command.together.is_empty() {
        let mut unset: Vec<String> = command
            .together
            .iter()
            .filter(|n| !parsed.changed(n))
            .map(|n| n.to_string())
            .collect();
        if !unset.is_empty() && unset.len() != command.together.len() {
            unset.sort();
            return Err(CliError::FlagGroupIncomplete {
                group: command.together.iter().map(|n| n.to_string()).collect(),
                missing: unset,
            });
        }
    }
    if !command.one_required.is_empty() && !command.one_required.iter().any(|n| parsed.changed(n)) {
        return Err(CliError::FlagGroupEmpty(
            command.one_required.iter().map(|n| n.to_string()).collect(),
        ));
    }
    Ok(())
}

/// The usage text (cobra's default usage function), ending with a newline.
pub(crate) fn usage(chain: &[&Command]) -> String {
    usage_text(chain, true)
}

/// The usage text of a command whose help and version flags were never set up: cobra adds them
/// only when a command runs or shows its help, so `help <unknown>` prints the root's usage
/// without a Flags section.
pub(crate) fn usage_without_flags(chain: &[&Command]) -> String {
    usage_text(chain, false)
}

fn usage_text(chain: &[&Command], with_flags: bool) -> String {
    let command = chain[chain.len() - 1];
    let path = command_path(chain);
    let mut out = String::from("Usage:");
    if command.action.is_some() {
        let mut line = match chain.len() {
            1 => command.use_line.to_string(),
            n => format!("{} {}", command_path(&chain[..n - 1]), command.use_line),
        };
        // Every command has at least the help flag.
        if with_flags && !line.contains("[flags]") {
            line.push_str(" [flags]");
        }
        let _ = write!(out, "\n  {line}");
    }
    let available = command.children.iter().any(Command::is_available);
    if available {
        let _ = write!(out, "\n  {path} [command]");
    }
    if !command.aliases.is_empty() {
        let _ = write!(
            out,
            "\n\nAliases:\n  {}",
            [&[command.name][..], command.aliases].concat().join(", ")
        );
    }
    if available {
        out.push_str("\n\nAvailable Commands:");
        let padding = command
            .children
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max(MIN_NAME_PADDING);
        let mut listed: Vec<&Command> = command
            .children
            .iter()
            .filter(|c| c.is_available() || c.is_help)
            .collect();
        listed.sort_by(|a, b| a.name.cmp(b.name));
        for child in listed {
            let _ = write!(out, "\n  {:<padding$} {}", child.name, child.short);
        }
    }
    let flags = if with_flags {
        command.effective_flags()
    } else {
        command.flags.clone()
    };
    let flag_lines = flags.usages();
    if !flag_lines.is_empty() {
        let _ = write!(out, "\n\nFlags:\n{flag_lines}");
    }
    if available {
        let _ = write!(
            out,
            "\n\nUse \"{path} [command] --help\" for more information about a command."
        );
    }
    out.push('\n');
    out
}

/// The help text (cobra's default help function).
pub(crate) fn help(chain: &[&Command]) -> String {
    let command = chain[chain.len() - 1];
    let description = if command.long.is_empty() {
        command.short
    } else {
        command.long.as_str()
    };
    let description = description.trim_end();
    let mut out = String::new();
    if !description.is_empty() {
        out.push_str(description);
        out.push_str("\n\n");
    }
    if command.action.is_some() || !command.children.is_empty() {
        out.push_str(&usage(chain));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Command {
        let mut root = Command::new("tool", "tool", "A tool");
        let mut deploy = Command::new("deploy", "deploy <service>", "Deploy it")
            .flag(Flag::new("target", Value::Strings(vec![]), "Target"))
            .flag(Flag::new("tls", Value::Bool(false), "TLS"));
        deploy.action = Some(Action::Deploy);
        deploy.positionals = Positionals::Exactly(1);
        let mut list = Command::new("list", "list", "List them");
        list.aliases = &["ls"];
        list.action = Some(Action::List);
        list.positionals = Positionals::None;
        let mut group = Command::new("rollout", "rollout", "Manage rollouts");
        let mut set = Command::new("set", "set <service>", "Set it");
        set.action = Some(Action::RolloutSet);
        group.children.push(set);
        root.children = vec![deploy, list, group];
        root
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn names(chain: &[&Command]) -> String {
        command_path(chain)
    }

    #[test]
    fn finds_subcommands_around_flags() {
        let root = tree();
        let (chain, rest) = find(&root, &args(&["deploy", "svc", "--target", "x"])).unwrap();
        assert_eq!(names(&chain), "tool deploy");
        assert_eq!(rest, args(&["svc", "--target", "x"]));
        let (chain, rest) = find(&root, &args(&["--target", "x", "deploy", "svc"])).unwrap();
        assert_eq!(names(&chain), "tool deploy");
        assert_eq!(rest, args(&["--target", "x", "svc"]));
        let (chain, _) = find(&root, &args(&["ls"])).unwrap();
        assert_eq!(names(&chain), "tool list");
        let (chain, rest) = find(&root, &args(&["rollout", "set", "svc"])).unwrap();
        assert_eq!(names(&chain), "tool rollout set");
        assert_eq!(rest, args(&["svc"]));
        let (chain, rest) = find(&root, &args(&["rollout", "nope"])).unwrap();
        assert_eq!(names(&chain), "tool rollout");
        assert_eq!(rest, args(&["nope"]));
    }

    #[test]
    fn help_flag_before_the_command_swallows_it_like_cobra() {
        let root = tree();
        let (chain, rest) = find(&root, &args(&["--help", "deploy"])).unwrap();
        assert_eq!(names(&chain), "tool");
        assert_eq!(rest, args(&["--help", "deploy"]));
    }

    #[test]
    fn unknown_commands_get_suggestions() {
        let root = tree();
        let err = find(&root, &args(&["foo"])).unwrap_err();
        assert_eq!(err.to_string(), r#"unknown command "foo" for "tool""#);
        let err = find(&root, &args(&["deplyo"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown command \"deplyo\" for \"tool\"\n\nDid you mean this?\n\tdeploy\n"
        );
        let err = find(&root, &args(&["l"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown command \"l\" for \"tool\"\n\nDid you mean this?\n\tlist\n"
        );
    }

    #[test]
    fn positional_rules() {
        let root = tree();
        let (chain, _) = find(&root, &args(&["deploy"])).unwrap();
        assert_eq!(
            check_positionals(&chain, &[]).unwrap_err().to_string(),
            "accepts 1 arg(s), received 0"
        );
        assert_eq!(
            check_positionals(&chain, &args(&["a", "b"]))
                .unwrap_err()
                .to_string(),
            "accepts 1 arg(s), received 2"
        );
        let (chain, _) = find(&root, &args(&["list"])).unwrap();
        assert_eq!(
            check_positionals(&chain, &args(&["extra"]))
                .unwrap_err()
                .to_string(),
            r#"unknown command "extra" for "tool list""#
        );
    }

    #[test]
    fn levenshtein_distance() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("stop", "stpo"), 2);
        assert_eq!(levenshtein("deploy", "deploy"), 0);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn help_layout_matches_cobra() {
        let root = tree();
        let want = "A tool\n\nUsage:\n  tool [command]\n\nAvailable Commands:\n  \
                    deploy      Deploy it\n  list        List them\n  rollout     Manage rollouts\n\n\
                    Flags:\n  -h, --help   help for tool\n\n\
                    Use \"tool [command] --help\" for more information about a command.\n";
        assert_eq!(help(&[&root]), want);
        let list = &root.children[1];
        let want = "List them\n\nUsage:\n  tool list [flags]\n\nAliases:\n  list, ls\n\n\
                    Flags:\n  -h, --help   help for list\n";
        assert_eq!(help(&[&root, list]), want);
    }
}
