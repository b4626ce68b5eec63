//! What `agent install` and `gateway install` share (feature `settings`): resolving the paths, the
//! `--print` and `--force` rules, crash-safe writes, the config file of effective settings and the
//! `systemctl` instructions printed after it.
//!
//! Each binary's `install.rs` keeps what is its own: the unit text, the settings in its config file
//! and their examples, and the gateway's sshd snippet. docs/deploy.md explains every choice.
//!
//! Every non-generic function here is `#[inline]`, so that it is compiled in the binary that calls it
//! (see the note in `settings.rs`: the size-tuned agent must not grow).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{atomic_file, Error, Result};

/// Where systemd looks for units an administrator installed.
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// What differs between the binaries in the shared part of `install`.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The binary's name, `agent` or `gateway` (the service is `burrow-NAME`).
    pub binary: &'static str,
    /// The unit's file name, and the name `systemctl` knows the service by.
    pub unit: &'static str,
    /// The config file's name in `--config-dir`.
    pub config: &'static str,
    /// Printed last, after a blank line: what to do once the service runs.
    pub next_steps: &'static str,
}

/// What `--print` prints instead of writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Print {
    /// Both files, each after a `# PATH` line.
    All,
    /// The unit alone.
    Unit,
    /// The config file alone.
    Config,
}

/// The paths of an `install`, absolute, from which the binary renders its unit and config file.
#[derive(Debug)]
pub struct Paths {
    /// The binary the unit runs.
    pub bin: PathBuf,
    /// The service's data dir.
    pub data_dir: PathBuf,
    /// Where the config file goes.
    pub config_path: PathBuf,
    /// Where the unit goes.
    pub unit_path: PathBuf,
}

/// What `install` writes, resolved to absolute paths.
#[derive(Debug)]
pub struct Plan {
    /// Where the unit goes.
    pub unit_path: PathBuf,
    /// The unit's text.
    pub unit: String,
    /// Where the config file goes.
    pub config_path: PathBuf,
    /// The config file's text.
    pub config: String,
    /// The service's data dir, created 0700.
    pub data_dir: PathBuf,
}

impl Paths {
    /// Resolves the paths: `bin` defaults to the running binary, which must be usable by the unit
    /// (see [`check_binary`]; `printing` relaxes it).
    #[inline]
    pub fn resolve(
        service: &Service,
        bin: Option<&Path>,
        data_dir: &Path,
        config_dir: &Path,
        unit_dir: &Path,
        printing: bool,
    ) -> Result<Paths> {
        let bin = match bin {
            Some(bin) => absolute(bin)?,
            None => std::env::current_exe()
                .map_err(|e| because("finding this binary's path (pass --bin)", e))?,
        };
        check_binary(&bin, printing)?;
        let data_dir = absolute(data_dir)?;
        let config_path = absolute(config_dir)?.join(service.config);
        let unit_path = absolute(unit_dir)?.join(service.unit);
        for warning in hidden_by_private_tmp(service, &bin, &data_dir, &config_path) {
            if !printing {
                return Err(failed(warning));
            }
            eprintln!("warning: {warning}");
        }
        Ok(Paths {
            bin,
            data_dir,
            config_path,
            unit_path,
        })
    }

    /// The plan of writing `unit` and `config` to these paths.
    #[inline]
    pub fn into_plan(self, unit: String, config: String) -> Plan {
        Plan {
            unit_path: self.unit_path,
            unit,
            config_path: self.config_path,
            config,
            data_dir: self.data_dir,
        }
    }
}

/// Carries out `plan`: prints it (`print`), or writes both files and the data dir and says how to
/// start the service. An existing config file is replaced only with `force`.
#[inline]
pub fn run(service: &Service, plan: &Plan, print: Option<Print>, force: bool) -> Result<()> {
    if let Some(what) = print {
        match what {
            Print::All => print!(
                "# {}\n{}\n# {}\n{}",
                plan.unit_path.display(),
                plan.unit,
                plan.config_path.display(),
                plan.config
            ),
            Print::Unit => print!("{}", plan.unit),
            Print::Config => print!("{}", plan.config),
        }
        return Ok(());
    }
    if plan.config_path.exists() && !force {
        return Err(failed(format!(
            "{} exists; pass --force to replace it (its settings are kept unless given again), \
             or --print to see what would be written",
            plan.config_path.display()
        )));
    }
    write(&plan.unit_path, &plan.unit, 0o644)?;
    // 0600: the file may hold a secret (the agent's join string, until it is used up or expires).
    write(&plan.config_path, &plan.config, 0o600)?;
    atomic_file::private_dir(&plan.data_dir)?;
    println!("wrote {}", plan.unit_path.display());
    println!("wrote {} (mode 0600)", plan.config_path.display());
    println!("\nStart the {} now and at every boot:\n", service.binary);
    if plan.unit_path.parent() != Some(Path::new(SYSTEM_UNIT_DIR)) {
        println!("  systemctl link {}", plan.unit_path.display());
    }
    println!(
        "  systemctl daemon-reload && systemctl enable --now burrow-{}",
        service.binary
    );
    println!("\n{}", service.next_steps);
    Ok(())
}

/// The unit must be able to start the binary: it exists (when printing, e.g. a unit for release
/// artefacts, it may be installed later), and the sandbox does not hide it.
#[inline]
pub fn check_binary(bin: &Path, printing: bool) -> Result<()> {
    if !bin.is_file() {
        if !printing {
            return Err(failed(format!(
                "{} is not a file (pass --bin PATH)",
                bin.display()
            )));
        }
        eprintln!(
            "note: {} does not exist (yet): the unit runs it from there",
            bin.display()
        );
    }
    Ok(())
}

/// What the unit would not find because the service gets a private `/tmp` and `/var/tmp`
/// (`PrivateTmp=yes`): its binary, data dir or config file under them. Printing a unit only warns
/// (it writes nothing); installing one refuses.
#[inline]
pub fn hidden_by_private_tmp(
    service: &Service,
    bin: &Path,
    data_dir: &Path,
    config_path: &Path,
) -> Vec<String> {
    let name = service.binary;
    [
        (
            "binary",
            bin,
            format!("copy it to e.g. /usr/local/bin/{name} and pass --bin /usr/local/bin/{name}"),
        ),
        (
            "data dir",
            data_dir,
            format!("pass e.g. --data-dir /var/lib/burrow/{name}"),
        ),
        (
            "config file",
            config_path,
            "pass e.g. --config-dir /etc/burrow".to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, path, _)| path.starts_with("/tmp") || path.starts_with("/var/tmp"))
    .map(|(what, path, advice)| {
        format!(
            "the {what} {} would be hidden from the service by PrivateTmp=yes: {advice}",
            path.display()
        )
    })
    .collect()
}

/// A path as a unit file value: absolute, and nothing systemd would split, expand or unescape.
#[inline]
pub fn unit_path(path: &Path) -> Result<String> {
    match path.to_str() {
        Some(p)
            if !p.is_empty()
                && !p
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(c)) =>
        {
            Ok(p.to_string())
        }
        _ => Err(failed(format!(
            "{} cannot go into a systemd unit as it is: choose a path without spaces, quotes, \
             `%`, `$`, `;` or `\\`",
            path.display()
        ))),
    }
}

/// The unit lines that have systemd create a data dir under `/var/lib` (0700) before setting up the
/// sandbox, which needs it to exist; none for a data dir elsewhere.
#[inline]
pub fn state_directory(data_dir: &Path) -> Result<String> {
    match data_dir.strip_prefix("/var/lib") {
        Ok(state) if !state.as_os_str().is_empty() => Ok(format!(
            "StateDirectory={}\nStateDirectoryMode=0700\n",
            unit_path(state)?
        )),
        _ => Ok(String::new()),
    }
}

/// One key of a config file: its name, its value in this run as TOML (none: not set) and, for a
/// setting without a default, the example shown when it is commented out.
pub type Setting<'a> = (&'a str, Option<String>, &'a str);

/// The config file `install` writes: `header`, then every setting of `commands` (their `BURROW_*`
/// flags, in order, each key once; see [`crate::settings`]) with its help as a comment. A setting
/// whose value in `set` differs from its default is written `key = value`; every other one is
/// commented out with its default (`# key = "10s"`) or, without one, its example, so the file lists
/// everything that can be set, as `/etc` files do. A key of `commands` missing from `set` is
/// commented out too: each binary's test checks `set` covers them all.
#[inline]
pub fn config_file(header: &str, commands: &[&clap::Command], set: &[Setting<'_>]) -> String {
    let mut text = String::from(header);
    let mut seen = std::collections::BTreeSet::new();
    for arg in commands.iter().flat_map(|c| c.get_arguments()) {
        let Some(key) = crate::settings::setting_key(arg) else {
            continue;
        };
        if !seen.insert(key.clone()) {
            continue;
        }
        let (value, example) = set
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or((None, ""), |(_, v, e)| (v.clone(), *e));
        let default = default_toml(arg);
        text.push('\n');
        if let Some(help) = arg.get_help() {
            comment(&mut text, &help.to_string());
        }
        let line = match (value, default) {
            (Some(v), Some(d)) if v == d => format!("# {key} = {d}"),
            (Some(v), _) => format!("{key} = {v}"),
            (None, Some(d)) => format!("# {key} = {d}"),
            (None, None) => format!("# {key} = {example}"),
        };
        writeln!(text, "{}", line.trim_end()).expect("writing to a String");
    }
    text
}

/// `words` as `# ` lines of at most 100 columns.
#[inline]
fn comment(text: &mut String, words: &str) {
    let mut line = String::from("#");
    for word in words.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > 100 {
            writeln!(text, "{line}").expect("writing to a String");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    writeln!(text, "{line}").expect("writing to a String");
}

/// A flag's default value as TOML: a switch's `false`, a number bare, anything else a string.
#[inline]
fn default_toml(arg: &clap::Arg) -> Option<String> {
    if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        return Some("false".into());
    }
    let values = arg.get_default_values();
    let value = values.first()?.to_str()?;
    Some(match value.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml_string(value),
    })
}

/// A TOML basic string. JSON's string escapes (`\"`, `\\`, `\n`, `\u00XX`, never `\/`) are a subset
/// of TOML's, so serde_json writes it.
#[inline]
pub fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// A TOML key: bare when TOML allows it, quoted otherwise.
#[inline]
pub fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        toml_string(k)
    }
}

/// Writes `text` to `path` crash-safely with permission bits `mode`, creating the directory.
#[inline]
pub fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| because(format!("creating {}", dir.display()), e))?;
    }
    atomic_file::write(path, text.as_bytes(), mode).map_err(|e| {
        because(
            "run as root, or pass --print to see what would be written",
            e,
        )
    })
}

#[inline]
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| failed(e.to_string()))
}

#[inline]
fn failed(message: String) -> Error {
    Error::Install {
        message,
        source: None,
    }
}

#[inline]
fn because(
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Install {
        message: message.into(),
        source: Some(Box::new(source)),
    }
}

/// Helpers for the install tests of both binaries (`agent install`, `gateway install`), which
/// install for real into temporary directories. Not used by the binaries themselves.
#[doc(hidden)]
pub mod testing {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The binary the tests' units run: present on every Linux, never under /tmp.
    pub const TEST_BIN: &str = "/bin/sh";

    /// Where tests that install for real make their temporary directory: outside `/tmp` and
    /// `/var/tmp` (a unit with `PrivateTmp=yes` could not see those, so installing refuses them),
    /// in `/run` as root, else in `$HOME`.
    pub fn install_test_base() -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the effective user.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if root {
            PathBuf::from("/run")
        } else {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
        }
    }

    /// `<program> --config /dev/null <args>` parsed with the config machinery but no config file and
    /// no environment; an `install` is given `--bin TEST_BIN` unless it names one (the test binary
    /// may live under /tmp, which install refuses because of PrivateTmp=yes).
    pub fn parse_cli<C: clap::Parser>(program: &str, args: &[&str]) -> C {
        let bin: &[&str] = if args.contains(&"install") && !args.contains(&"--bin") {
            &["--bin", TEST_BIN]
        } else {
            &[]
        };
        let args: Vec<OsString> = [program, "--config", "/dev/null"]
            .iter()
            .chain(args)
            .chain(bin)
            .map(OsString::from)
            .collect();
        let command = crate::settings::command::<C>(&args, Path::new("/nonexistent"))
            .unwrap()
            .mut_args(|a| a.env(None))
            .mut_subcommand("install", |c| c.mut_args(|a| a.env(None)));
        C::from_arg_matches(&command.get_matches_from(args)).unwrap()
    }

    /// Says a check was skipped, on the real stderr: the test harness captures `eprintln!` and shows
    /// it only for failures, and a skipped check must be visible in CI logs.
    pub fn skipped(why: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    }

    /// What `systemd-analyze verify` finds wrong with `unit`: nothing is a pass. None (with a notice)
    /// when this machine has no systemd-analyze. It exits 0 on many problems ("Unknown key ...,
    /// ignoring"), so any line about the unit counts too.
    pub fn systemd_problems(unit: &Path) -> Option<String> {
        let out = match Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skipped(&format!(
                    "systemd-analyze not found (apt-get install -y systemd); {} not verified",
                    unit.display()
                ));
                return None;
            }
            Err(e) => panic!("running systemd-analyze: {e}"),
        };
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let name = unit.file_name().unwrap().to_str().unwrap();
        let about_unit = said.lines().filter(|l| l.contains(name));
        Some(if out.status.success() {
            about_unit.collect::<Vec<_>>().join("\n")
        } else {
            said
        })
    }
}
