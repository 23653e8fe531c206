//! Every way a CLI invocation can fail. The Display texts are upstream's (cobra, pflag and
//! kamal-proxy's own), because scripts and Kamal read them; `main` prints them as `Error: <text>`.

use kamal_control::quote::{quote, quote_rune};

/// A failed CLI invocation (printed as `Error: <message>`, exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A long flag the command does not define.
    #[error("unknown flag: --{0}")]
    UnknownFlag(String),
    /// A shorthand flag the command does not define.
    #[error("unknown shorthand flag: {} in -{shorthands}", quote_rune(*flag))]
    UnknownShorthandFlag {
        /// The unknown letter.
        flag: char,
        /// The shorthand group it appeared in (from that letter on).
        shorthands: String,
    },
    /// A flag that needs a value was last on the command line.
    #[error("flag needs an argument: --{0}")]
    FlagNeedsArgument(String),
    /// A shorthand flag that needs a value was last on the command line.
    #[error("flag needs an argument: {} in -{shorthands}", quote_rune(*flag))]
    ShorthandFlagNeedsArgument {
        /// The letter.
        flag: char,
        /// The shorthand group it appeared in.
        shorthands: String,
    },
    /// `---x` or `--=x`.
    #[error("bad flag syntax: {0}")]
    BadFlagSyntax(String),
    /// A value that does not parse as the flag's type.
    #[error("invalid argument {} for {} flag: {cause}", quote(value), quote(flag))]
    InvalidFlagValue {
        /// The flag as pflag names it (`--tls` or `-h, --help`).
        flag: String,
        /// The value as given.
        value: String,
        /// The parser's error, in Go's words.
        cause: String,
    },
    /// A command taking one `<service>` got another number of positionals.
    #[error("accepts {expected} arg(s), received {received}")]
    WrongArgumentCount {
        /// Positionals the command takes.
        expected: usize,
        /// Positionals given.
        received: usize,
    },
    /// A word that is not a command (or an argument to a command that takes none).
    #[error("unknown command {} for {}{suggestions}", quote(command), quote(path))]
    UnknownCommand {
        /// The word.
        command: String,
        /// The command path it was given to (`kamal-proxy list`).
        path: String,
        /// cobra's "Did you mean this?" block, or empty.
        suggestions: String,
    },
    /// Required flags not given.
    #[error("required flag(s) \"{}\" not set", .0.join("\", \""))]
    RequiredFlagsMissing(Vec<String>),
    /// Only some flags of a must-be-set-together group were given.
    #[error("if any flags in the group [{}] are set they must all be set; missing [{}]", group.join(" "), missing.join(" "))]
    FlagGroupIncomplete {
        /// The group's flags.
        group: Vec<String>,
        /// Those not given.
        missing: Vec<String>,
    },
    /// None of the flags of an at-least-one group was given.
    #[error("at least one of the flags in the group [{}] is required", .0.join(" "))]
    FlagGroupEmpty(Vec<String>),
    /// `--max-request-body` without `--buffer-requests` on the command line.
    #[error("max-request-body can only be set when request buffering is enabled")]
    MaxRequestBodyWithoutBuffering,
    /// `--max-response-body` without `--buffer-responses` on the command line.
    #[error("max-response-body can only be set when response buffering is enabled")]
    MaxResponseBodyWithoutBuffering,
    /// Service options rejected by the client-side validation (message includes its prefix).
    #[error("{0}")]
    InvalidServiceOptions(#[from] kamal_control::OptionsError),
    /// The control socket could not be reached or the exchange failed.
    #[error("{0}")]
    Control(#[from] kamal_control::ClientError),
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
    /// The server answered with a reply that does not fit the request.
    #[error("unexpected reply from the server")]
    UnexpectedReply,
    /// A port outside 0..=65535 (Go reports it when listening).
    #[error("listen tcp: address {0}: invalid port")]
    InvalidPort(i64),
    /// The server failed to start or stopped with an error.
    #[error("{0}")]
    Run(String),
    /// `list --json` could not be encoded.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}
