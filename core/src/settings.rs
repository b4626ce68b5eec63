//! Settings from a TOML file and `BURROW_*` environment variables, with clap as the only parser; the
//! `--config` machinery of both binaries (feature `settings`).
//!
//! Every setting is a clap flag, and a flag declared with `env = "BURROW_X"` is also the file key `x`
//! (`data_dir` or `data-dir`): the env attribute is the single list of what can be configured. Before
//! parsing, each file value becomes its flag's *default value*, so clap's own order gives the precedence
//! command-line flag > environment variable > file > built-in default, and clap's value parsers check
//! the file's values like any other.
//!
//! The file is `--config FILE` (or `BURROW_CONFIG`), which must exist, else the default path if it
//! exists. `--help` and `--version` never read it (a broken or unreadable file must not hide the help).
//!
//! Each binary tests this against its real command line (`agent/src/config.rs`,
//! `gateway/src/config.rs`), including the environment.
//!
//! Every non-generic function here is `#[inline]` so that it is compiled in the binary that calls it,
//! sharing that binary's instances of clap, `BTreeMap` and string code. Compiled in this crate
//! instead, those instances were duplicated and the size-tuned agent grew by 2.4 KB (`--profile
//! agent`); with the attributes it is no bigger than when each binary had its own copy of this file.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

use crate::{Error, Result};

/// The flag, and environment variable, naming the config file.
const CONFIG_ARG: &str = "config";
const CONFIG_ENV: &str = "BURROW_CONFIG";
/// Environment variables of settings start with this; the rest, lowercased, is the file key.
const ENV_PREFIX: &str = "BURROW_";

/// Parses the process's arguments into `C` with the config file and environment applied. Usage errors,
/// `--help` and `--version` exit the way clap does; a bad config file is an [`Error::Config`].
pub fn parse<C: CommandFactory + FromArgMatches>(default_file: &Path) -> Result<C> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = command::<C>(&args, default_file)?;
    Ok(command
        .try_get_matches_from(args)
        .and_then(|matches| C::from_arg_matches(&matches))
        .unwrap_or_else(|e| e.exit()))
}

/// `C`'s command with `--config` added and the values of the config file that `args` select (if
/// any) installed as defaults; [`parse`] without the parsing, for tests and for callers that adjust
/// the command first.
///
/// ```
/// use std::ffi::OsString;
/// use std::path::Path;
///
/// use clap::{FromArgMatches, Parser};
///
/// #[derive(Parser)]
/// struct Cli {
///     /// Setting `greeting`: file key, `--greeting` and `BURROW_GREETING`.
///     #[arg(long, env = "BURROW_GREETING", default_value = "hello")]
///     greeting: String,
/// }
///
/// let file = std::env::temp_dir().join(format!("burrow-settings-doc-{}.toml", std::process::id()));
/// std::fs::write(&file, "greeting = \"hi\"\n")?;
/// let parse = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
///     let args: Vec<OsString> = args.iter().map(OsString::from).collect();
///     // The file found at the default path, unless `--config` names another.
///     let command = burrow_core::settings::command::<Cli>(&args, &file)?;
///     Ok(Cli::from_arg_matches(&command.try_get_matches_from(args)?)?.greeting)
/// };
/// assert_eq!(parse(&["demo"])?, "hi");
/// assert_eq!(parse(&["demo", "--greeting", "hey"])?, "hey");
/// assert_eq!(parse(&["demo", "--config", "/dev/null"])?, "hello");
/// std::fs::remove_file(&file)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn command<C: CommandFactory>(args: &[OsString], default_file: &Path) -> Result<Command> {
    let command = with_config_arg(C::command(), default_file);
    match config_file(&command, args, default_file) {
        None => Ok(command),
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::Config(format!(
                    "reading config file {} (--config FILE picks another one): {e}",
                    path.display()
                ))
            })?;
            let defaults = file_values(&command, &path, &text)?;
            Ok(with_defaults(command, &defaults))
        }
    }
}

#[inline]
fn with_config_arg(command: Command, default_file: &Path) -> Command {
    command.arg(
        Arg::new(CONFIG_ARG)
            .long(CONFIG_ARG)
            .env(CONFIG_ENV)
            .global(true)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help(format!(
                "Config file (TOML); {} is read if it exists",
                default_file.display()
            )),
    )
}

/// The file to read: the one named by `--config`/`BURROW_CONFIG`, or `default_file` if it exists; none
/// for `--help` and `--version`.
#[inline]
fn config_file(command: &Command, args: &[OsString], default_file: &Path) -> Option<PathBuf> {
    // A lenient pass of the real parser just to find `--config`; the real parse reports the errors.
    match command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args)
    {
        Ok(matches) => match matches.get_one::<PathBuf>(CONFIG_ARG) {
            Some(path) => Some(path.clone()),
            None => default_file.exists().then(|| default_file.to_path_buf()),
        },
        // With ignore_errors, only --help and --version come back as errors.
        Err(_) => None,
    }
}

/// Subcommands of `command` (at any depth) whose help lacks a one-line summary or an `Example` in
/// their long help, by path (`nodes approve`). Both binaries' tests want this empty.
pub fn help_gaps(command: &Command) -> Vec<String> {
    let mut gaps = Vec::new();
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let has_summary = sub
            .get_about()
            .is_some_and(|a| !a.to_string().trim().is_empty());
        let has_example = sub
            .get_after_long_help()
            .is_some_and(|h| h.to_string().contains("Example"));
        if !has_summary || !has_example {
            gaps.push(sub.get_name().to_string());
        }
        gaps.extend(
            help_gaps(sub)
                .into_iter()
                .map(|g| format!("{} {g}", sub.get_name())),
        );
    }
    gaps
}

/// The settings `command` accepts: file key → one of the flags with that key (a key such as `name`
/// can be on several subcommands). These are the keys a config file may hold.
#[inline]
pub fn settings(command: &Command) -> BTreeMap<String, Arg> {
    let mut found = BTreeMap::new();
    collect_settings(command, &mut found);
    found
}

#[inline]
fn collect_settings(command: &Command, found: &mut BTreeMap<String, Arg>) {
    for arg in command.get_arguments() {
        if let Some(key) = setting_key(arg) {
            found.entry(key).or_insert_with(|| arg.clone());
        }
    }
    for sub in command.get_subcommands() {
        collect_settings(sub, found);
    }
}

/// `BURROW_DATA_DIR` → `data_dir`; flags without a `BURROW_*` variable are not settings.
#[inline]
pub fn setting_key(arg: &Arg) -> Option<String> {
    let env = arg.get_env()?.to_str()?;
    let key = env.strip_prefix(ENV_PREFIX)?;
    (env != CONFIG_ENV && arg.get_long().is_some()).then(|| key.to_ascii_lowercase())
}

/// Checks the file and turns each of its values into the command-line strings of its flag.
#[inline]
fn file_values(
    command: &Command,
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, Vec<OsString>>> {
    let file = path.display();
    let table = DeTable::parse(text).map_err(|mut e| {
        e.set_input(Some(text));
        Error::Config(format!("{file}: {}", e.to_string().trim_end()))
    })?;
    let known = settings(command);
    let mut values: BTreeMap<String, Vec<OsString>> = BTreeMap::new();
    // In file order, so that errors point at the first problem and a duplicate at its second line.
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    for (key, value) in entries {
        let line = line_of(text, key.span().start);
        let written = key.get_ref().as_ref();
        let normal = written.replace('-', "_");
        let Some(arg) = known.get(&normal) else {
            let keys: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(Error::Config(format!(
                "unknown key `{written}` in {file} (line {line}); known keys: {}",
                keys.join(", ")
            )));
        };
        let strings = flag_values(arg, value.get_ref())
            .and_then(|strings| {
                strings.iter().try_for_each(|s| check_value(arg, s))?;
                Ok(strings)
            })
            .map_err(|why| Error::Config(format!("`{written}` in {file} (line {line}): {why}")))?;
        if values.insert(normal, strings).is_some() {
            return Err(Error::Config(format!(
                "`{written}` in {file} (line {line}) is set twice (`-` and `_` are the same)"
            )));
        }
    }
    Ok(values)
}

/// A file value as its flag's command-line strings: the shapes each kind of flag accepts.
#[inline]
fn flag_values(arg: &Arg, value: &DeValue<'_>) -> Result<Vec<OsString>, String> {
    let scalar = |v: &DeValue<'_>| match v {
        DeValue::String(s) => Ok(OsString::from(s.as_ref())),
        DeValue::Integer(i) => Ok(OsString::from(i.as_str())),
        other => Err(format!("expected a string, found {}", other.type_str())),
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, DeValue::Boolean(b)) => Ok(vec![b.to_string().into()]),
        (ArgAction::SetTrue, other) => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
        // A repeatable flag: `["a", "b"]`, or `{ k = "v" }` for KEY=VALUE flags such as --label.
        (ArgAction::Append, DeValue::Array(items)) => items
            .iter()
            .map(|item| scalar(item.get_ref()))
            .collect::<Result<_, _>>(),
        (ArgAction::Append, DeValue::Table(pairs)) => pairs
            .iter()
            .map(|(k, v)| {
                let mut pair = OsString::from(format!("{}=", k.get_ref()));
                pair.push(scalar(v.get_ref())?);
                Ok(pair)
            })
            .collect(),
        (_, other) => Ok(vec![scalar(other)?]),
    }
}

/// Runs one value through its flag's own value parser, so a bad value names the file and line rather
/// than surfacing later as an error about a command-line flag that was never typed.
#[inline]
fn check_value(arg: &Arg, value: &OsStr) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Ok(());
    }
    if let Some(d) = arg.get_value_delimiter() {
        // clap splits default values at the delimiter too, as it splits `--label a=1,b=2`.
        if value.to_string_lossy().contains(d) {
            return Err(format!("{value:?} contains `{d}`, which separates values"));
        }
    }
    let long = arg.get_long().unwrap_or("value");
    let probe = Command::new("config").no_binary_name(true).arg(
        Arg::new("value")
            .long(long.to_string())
            .value_name(long.to_ascii_uppercase())
            .value_parser(arg.get_value_parser().clone()),
    );
    let mut flag = OsString::from(format!("--{long}="));
    flag.push(value);
    probe.try_get_matches_from([flag]).map(drop).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        first.strip_prefix("error: ").unwrap_or(first).to_string()
    })
}

#[inline]
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Installs the file's values as defaults of every flag with that key, in every subcommand.
#[inline]
fn with_defaults(command: Command, values: &BTreeMap<String, Vec<OsString>>) -> Command {
    let command = command.mut_args(|arg| match setting_key(&arg).and_then(|k| values.get(&k)) {
        Some(v) => arg.default_values(v),
        None => arg,
    });
    let subs: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    subs.iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| with_defaults(sub, values))
    })
}

/// Logs at `level` to stderr with RFC 3339 timestamps, as both binaries do once their flags are
/// parsed. A second call is a no-op.
#[inline]
pub fn init_logging(level: simplelog::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}
