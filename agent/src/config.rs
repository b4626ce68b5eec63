//! Settings from a TOML file and `BURROW_*` environment variables, with clap as the only parser.
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
//! The gateway has a twin of this file, `gateway/src/config.rs`: keep the code above the tests identical.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

/// The flag, and environment variable, naming the config file.
const CONFIG_ARG: &str = "config";
const CONFIG_ENV: &str = "BURROW_CONFIG";
/// Environment variables of settings start with this; the rest, lowercased, is the file key.
const ENV_PREFIX: &str = "BURROW_";

/// Parses the process's arguments into `C` with the config file and environment applied. Usage errors,
/// `--help` and `--version` exit the way clap does; a bad config file is an `Err`.
pub fn parse<C: CommandFactory + FromArgMatches>(default_file: &Path) -> Result<C> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = command::<C>(&args, default_file)?;
    Ok(command
        .try_get_matches_from(args)
        .and_then(|matches| C::from_arg_matches(&matches))
        .unwrap_or_else(|e| e.exit()))
}

/// `C`'s command with `--config` added and the values of the config file that `args` select (if
/// any) installed as defaults.
pub fn command<C: CommandFactory>(args: &[OsString], default_file: &Path) -> Result<Command> {
    let command = with_config_arg(C::command(), default_file);
    match config_file(&command, args, default_file) {
        None => Ok(command),
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading config file {} (--config FILE picks another one)",
                    path.display()
                )
            })?;
            let defaults = file_values(&command, &path, &text)?;
            Ok(with_defaults(command, &defaults))
        }
    }
}

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

/// The settings `command` accepts: file key → one of the flags with that key (a key such as `name`
/// can be on several subcommands).
fn settings(command: &Command) -> BTreeMap<String, Arg> {
    let mut found = BTreeMap::new();
    collect_settings(command, &mut found);
    found
}

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
fn setting_key(arg: &Arg) -> Option<String> {
    let env = arg.get_env()?.to_str()?;
    let key = env.strip_prefix(ENV_PREFIX)?;
    (env != CONFIG_ENV && arg.get_long().is_some()).then(|| key.to_ascii_lowercase())
}

/// Checks the file and turns each of its values into the command-line strings of its flag.
fn file_values(
    command: &Command,
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, Vec<OsString>>> {
    let file = path.display();
    let table = DeTable::parse(text).map_err(|mut e| {
        e.set_input(Some(text));
        anyhow!("{file}: {}", e.to_string().trim_end())
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
            bail!(
                "unknown key `{written}` in {file} (line {line}); known keys: {}",
                keys.join(", ")
            );
        };
        let strings = flag_values(arg, value.get_ref())
            .and_then(|strings| {
                strings.iter().try_for_each(|s| check_value(arg, s))?;
                Ok(strings)
            })
            .map_err(|why| anyhow!("`{written}` in {file} (line {line}): {why}"))?;
        if values.insert(normal, strings).is_some() {
            bail!("`{written}` in {file} (line {line}) is set twice (`-` and `_` are the same)");
        }
    }
    Ok(values)
}

/// A file value as its flag's command-line strings: the shapes each kind of flag accepts.
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

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Installs the file's values as defaults of every flag with that key, in every subcommand.
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

#[cfg(test)]
mod tests {
    use std::process::Command as Process;

    use super::*;
    use crate::cli::{Cli, Command as Sub};

    const NO_DEFAULT: &str = "/nonexistent/burrow/agent.toml";

    /// A config file in a fresh temp dir (removed when the returned guard drops).
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        std::iter::once("agent")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Drops every `env` attribute, so the developer's own `BURROW_*` variables cannot change the
    /// in-process tests (the environment is tested in child processes, see `in_child`).
    fn without_env(command: Command) -> Command {
        let command = command.mut_args(|arg| arg.env(None));
        let subs: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        subs.iter().fold(command, |command, name| {
            command.mut_subcommand(name, without_env)
        })
    }

    fn parse_with(args: &[&str], default_file: &Path) -> Result<Cli> {
        let args = os(args);
        let command = without_env(command::<Cli>(&args, default_file)?);
        let matches = command.try_get_matches_from(args)?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    fn parse(args: &[&str]) -> Result<Cli> {
        parse_with(args, Path::new(NO_DEFAULT))
    }

    fn run_profile(cli: &Cli) -> (Option<String>, &crate::cli::Profile) {
        match &cli.command {
            Sub::Run { join, profile } => (join.clone(), profile),
            other => panic!("expected run, got {other:?}"),
        }
    }

    const FULL: &str = r#"
data_dir = "/srv/burrow"
log = "debug"
join = "burrow1.example"
name = "pi-1"
capability = ["gpio", "camera"]
label = { site = "home", rack = "2" }
"#;

    #[test]
    fn file_values_apply_and_command_line_flags_win() {
        let (_dir, path) = file(FULL);
        let config = path.to_str().unwrap();
        let cli = parse(&["--config", config, "run"]).unwrap();
        assert_eq!(cli.data_dir, Path::new("/srv/burrow"));
        assert_eq!(cli.log, log::LevelFilter::Debug);
        let (join, profile) = run_profile(&cli);
        assert_eq!(join.as_deref(), Some("burrow1.example"));
        assert_eq!(profile.name.as_deref(), Some("pi-1"));
        assert_eq!(profile.capabilities, ["gpio", "camera"]);
        let labels = [("rack", "2"), ("site", "home")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(profile.labels, labels);

        // A flag beats the file; a repeated flag replaces the file's list rather than adding to it.
        let cli = parse(&[
            "run",
            "--config",
            config,
            "--name",
            "pi-2",
            "--capability",
            "usb",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(cli.data_dir, Path::new("/tmp/x"));
        let (_, profile) = run_profile(&cli);
        assert_eq!(profile.name.as_deref(), Some("pi-2"));
        assert_eq!(profile.capabilities, ["usb"]);
        assert_eq!(profile.labels.len(), 2, "labels still come from the file");

        // `join` is `run --join`; the `join` subcommand's positional string is not a setting.
        let cli = parse(&["--config", config, "join", "burrow1.other"]).unwrap();
        match cli.command {
            Sub::Join { join, profile } => {
                assert_eq!(join, "burrow1.other");
                assert_eq!(profile.name.as_deref(), Some("pi-1"));
            }
            other => panic!("expected join, got {other:?}"),
        }
    }

    #[test]
    fn default_file_is_read_only_if_it_exists_and_dashes_equal_underscores() {
        let cli = parse(&["id"]).unwrap();
        assert_eq!(cli.data_dir, Path::new("/var/lib/burrow/agent"));
        assert_eq!(cli.log, log::LevelFilter::Info);
        let (_dir, path) = file("data-dir = \"/srv/a\"\n");
        let cli = parse_with(&["id"], &path).unwrap();
        assert_eq!(cli.data_dir, Path::new("/srv/a"));
        // An empty file is fine, and `--config /dev/null` is how to ignore the default file.
        let cli = parse_with(&["--config", "/dev/null", "id"], &path).unwrap();
        assert_eq!(cli.data_dir, Path::new("/var/lib/burrow/agent"));
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_the_key_and_the_line() {
        let cases: &[(&str, &str)] = &[
            ("name = \"a\"\nnmae = \"pi\"\n", "unknown key `nmae` in {} (line 2); known keys: capability, data_dir, join, label, log, name"),
            ("name = \"pi\n", "{}: TOML parse error at line 1, column 11"),
            ("log = \"loud\"\n", "`log` in {} (line 1): invalid value 'loud' for '--log <LOG>'"),
            ("capability = true\n", "`capability` in {} (line 1): expected a string, found boolean"),
            ("capability = [\"a\", true]\n", "`capability` in {} (line 1): expected a string, found boolean"),
            ("label = { site = 1.5 }\n", "`label` in {} (line 1): expected a string, found float"),
            ("label = [\"nokey\"]\n", "`label` in {} (line 1): invalid value 'nokey' for '--label <LABEL>': labels are KEY=VALUE"),
            ("name = [\"a\", \"b\"]\n", "`name` in {} (line 1): expected a string, found array"),
            ("label = { desc = \"a,b\" }\n", "`label` in {} (line 1): \"desc=a,b\" contains `,`, which separates values"),
            ("\n\n[name]\nx = 1\n", "`name` in {} (line 3): expected a string, found table"),
            ("data_dir = \"/a\"\ndata-dir = \"/b\"\n", "`data-dir` in {} (line 2) is set twice"),
            ("config = \"/etc/other.toml\"\n", "unknown key `config` in {} (line 1)"),
        ];
        for (text, expected) in cases {
            let (_dir, path) = file(text);
            let err = parse(&["--config", path.to_str().unwrap(), "run"]).unwrap_err();
            let expected = expected.replace("{}", &path.display().to_string());
            let got = format!("{err:#}");
            assert!(
                got.starts_with(&expected),
                "for {text:?}\n got: {got}\nwant: {expected}"
            );
        }
        let err = parse(&["--config", "/nonexistent/agent.toml", "id"]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("reading config file /nonexistent/agent.toml"),
            "{err:#}"
        );
    }

    #[test]
    fn help_and_version_do_not_read_the_file() {
        let (_dir, path) = file("nmae = 1\n");
        for flag in ["--help", "--version"] {
            let err = parse(&["--config", path.to_str().unwrap(), flag]).unwrap_err();
            let err = err
                .downcast::<clap::Error>()
                .expect("a clap error, not a config one");
            assert!(!err.use_stderr(), "{flag}: {err}");
        }
    }

    #[test]
    fn every_setting_is_its_long_flag_in_env_and_file_and_is_documented() {
        let docs = include_str!("../../docs/deploy.md");
        let command = Cli::command();
        for (key, arg) in settings(&command) {
            let long = arg.get_long().unwrap();
            assert_eq!(key, long.replace('-', "_"), "key of --{long}");
            let env = format!("BURROW_{}", key.to_ascii_uppercase());
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/deploy.md lacks `{key}`"
            );
            assert!(docs.contains(&env), "docs/deploy.md lacks {env}");
        }
        assert_eq!(
            settings(&command).into_keys().collect::<Vec<_>>(),
            ["capability", "data_dir", "join", "label", "log", "name"]
        );
    }

    /// Runs `args` through `config::parse` in a fresh copy of this test binary with exactly `env`
    /// (plus PATH), and returns its `Debug` print of the parsed `Cli`: how the environment is tested
    /// without changing this process's environment under tests running in parallel.
    fn in_child(args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BURROW_TEST_CHILD_ARGS", args.join("\u{1f}"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| Some(l.split_once("PARSED ")?.1))
            .unwrap_or_else(|| panic!("child printed no result: {stdout}"))
            .to_string()
    }

    /// The child half of `in_child`; does nothing in a normal test run.
    #[test]
    fn child() {
        let Ok(args) = std::env::var("BURROW_TEST_CHILD_ARGS") else {
            return;
        };
        let args = os(&args.split('\u{1f}').collect::<Vec<_>>());
        let result = command::<Cli>(&args, Path::new(NO_DEFAULT))
            .and_then(|c| Ok(c.try_get_matches_from(args)?))
            .and_then(|m| Ok(Cli::from_arg_matches(&m)?));
        match result {
            Ok(cli) => println!("PARSED {cli:?}"),
            Err(e) => println!("PARSED error: {e:#}"),
        }
    }

    #[test]
    fn environment_beats_the_file_and_flags_beat_the_environment() {
        let (_dir, path) = file(FULL);
        let config = path.to_str().unwrap();
        let env = [
            ("BURROW_CONFIG", config),
            ("BURROW_NAME", "from-env"),
            ("BURROW_CAPABILITY", "a,b"),
            ("BURROW_LABEL", "site=office,floor=1"),
            ("BURROW_LOG", "warn"),
        ];
        let out = in_child(&["run"], &env);
        assert!(out.contains("name: Some(\"from-env\")"), "{out}");
        assert!(out.contains("capabilities: [\"a\", \"b\"]"), "{out}");
        assert!(
            out.contains("labels: [(\"site\", \"office\"), (\"floor\", \"1\")]"),
            "{out}"
        );
        assert!(out.contains("log: Warn"), "{out}");
        // Not in the environment: from the file found through BURROW_CONFIG.
        assert!(out.contains("data_dir: \"/srv/burrow\""), "{out}");
        assert!(out.contains("join: Some(\"burrow1.example\")"), "{out}");

        let out = in_child(&["run", "--name", "from-flag", "--log", "error"], &env);
        assert!(
            out.contains("name: Some(\"from-flag\")") && out.contains("log: Error"),
            "{out}"
        );

        // A bad value in the environment is clap's usual error about the variable.
        let out = in_child(&["run"], &[("BURROW_LOG", "loud")]);
        assert!(out.starts_with("error:") && out.contains("loud"), "{out}");
    }
}
