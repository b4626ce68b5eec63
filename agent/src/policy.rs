//! The node owner's exec policy (issue 9, point 4): what the gateway may run and where it may write
//! on this node. The gateway cannot override it; it only reads a summary ([`Policy::summary`], in
//! each heartbeat). docs/policy.md is the user's guide; this module owns parsing, the check of one
//! request, the current policy (swapped on SIGHUP) and the local refusal log (`policy.log`).
//!
//! The rule that matters most: the check reads the command exactly as it will be executed. `argv[0]`
//! is resolved through the PATH the child will get, canonicalized (symlinks resolved), matched, and
//! that canonical path is what [`crate::exec`] executes (no second PATH lookup), with `argv[0]` set
//! to it, so a multi-call binary cannot pick another personality from its name. Wrappers (`env`,
//! shells, `busybox`, `sudo`, interpreters given code ...) are known by the canonical program's file
//! name, so `env -S`, a symlink named `uptime` pointing at `/bin/sh`, or `sh` being busybox are all
//! seen for what they are.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use burrow_core::api::PolicySummary;
use burrow_core::protocol::ExecSpec;
use serde::Deserialize;

mod live;
#[cfg(test)]
mod tests;

pub use live::{current, fault, install, record, summary};

/// What the policy lets through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Everything runs (today's behaviour, and the default without a policy file).
    #[default]
    AllowAll,
    /// Only what a rule lists.
    Allowlist,
    /// Nothing runs: a monitoring-only node.
    DenyAll,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::AllowAll => "allow-all",
            Mode::Allowlist => "allowlist",
            Mode::DenyAll => "deny-all",
        }
    }
}

/// The file as written (`policy.toml`); unknown keys are errors, so a typo does not loosen anything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    allow_shell: bool,
    #[serde(default)]
    rule: Vec<Rule>,
    run_as: Option<String>,
    max_runtime: Option<String>,
    #[serde(default)]
    allow_env: Vec<String>,
    file_dirs: Option<Vec<PathBuf>>,
    #[serde(default = "yes")]
    services: bool,
    #[serde(default)]
    services_off: Vec<String>,
}

fn yes() -> bool {
    true
}

/// One allowlist rule: the canonical program, and optionally its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Absolute path; canonicalized when the policy is loaded.
    pub program: PathBuf,
    /// The arguments must be exactly these.
    pub args: Option<Vec<String>>,
    /// The arguments must start with these (anything may follow).
    pub args_prefix: Option<Vec<String>>,
}

impl Rule {
    fn matches(&self, program: &Path, args: &[String]) -> bool {
        program == self.program
            && self
                .args
                .as_ref()
                .is_none_or(|want| args == want.as_slice())
            && self
                .args_prefix
                .as_ref()
                .is_none_or(|want| args.starts_with(want))
    }
}

/// The user jobs run as (from /etc/passwd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// A loaded, checked policy ([`Default`]: allow-all, what a node without a policy file does).
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub allow_shell: bool,
    pub rules: Vec<Rule>,
    pub run_as: Option<User>,
    pub max_runtime: Option<Duration>,
    pub allow_env: Vec<String>,
    /// `None`: anywhere (allow-all without `file_dirs`); empty: no transfers.
    pub file_dirs: Option<Vec<PathBuf>>,
    /// Whether streams to the node's declared services are allowed at all.
    pub services: bool,
    /// Declared services the owner turned off one by one (`services_off`).
    pub services_off: Vec<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            mode: Mode::AllowAll,
            allow_shell: false,
            rules: Vec::new(),
            run_as: None,
            max_runtime: None,
            allow_env: Vec::new(),
            file_dirs: None,
            services: true,
            services_off: Vec::new(),
        }
    }
}

/// Why a request was refused: the rule (a stable name, documented in docs/policy.md) and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub rule: &'static str,
    pub detail: String,
}

impl Refused {
    fn new(rule: &'static str, detail: impl Into<String>) -> Refused {
        Refused {
            rule,
            detail: detail.into(),
        }
    }

    /// The `Failed` message: starts with "refused", which the gateway turns into the `refused` state.
    pub fn message(&self) -> String {
        format!(
            "refused by node policy (rule {}): {}",
            self.rule, self.detail
        )
    }
}

/// What to execute once the policy said yes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The program: the canonical path in allowlist mode, as given otherwise.
    pub program: PathBuf,
    /// `argv[0]` the program sees.
    pub arg0: Option<String>,
    pub args: Vec<String>,
    pub run_as: Option<User>,
    /// The timeout to enforce (the request's, capped by `max_runtime`).
    pub timeout: Duration,
}

/// Programs that run other programs or code given to them: refused unless a rule names them.
const WRAPPERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "fish", "csh", "tcsh", "env", "sudo",
    "doas", "su", "busybox", "nohup", "timeout", "nice", "ionice", "setsid", "xargs", "stdbuf",
    "chroot", "runuser", "setpriv", "unshare", "nsenter", "flock", "script", "watch", "time",
    "strace", "ltrace", "gdb", "taskset", "chrt", "prlimit", "ssh", "find", "awk", "gawk", "mawk",
];
/// Interpreters: wrappers when given code on the command line (or any option: options can carry it).
const INTERPRETERS: &[&str] = &[
    "python", "perl", "ruby", "node", "nodejs", "lua", "php", "tclsh",
];

/// Loader and startup variables that change what a program loads or runs, refused in a job's env in
/// allowlist mode unless `allow_env` names them (a prefix ending in `*` covers a family).
const LOADER_ENV: &[&str] = &[
    "LD_*",
    "DYLD_*",
    "PATH",
    "GCONV_PATH",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "MALLOC_*",
    "GLIBC_TUNABLES",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_*",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "PS4",
    "PYTHON*",
    "PERL5*",
    "PERLLIB",
    "RUBY*",
    "NODE_*",
    "LUA_*",
    "PHPRC",
    "TCLLIBPATH",
];

fn matches_name(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The file name of `program` is a wrapper's (`python3.11` is `python`'s).
fn wrapper_kind(program: &Path, args: &[String]) -> Option<&'static str> {
    let name = program.file_name()?.to_str()?;
    if WRAPPERS.contains(&name) {
        return Some("wrapper");
    }
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if INTERPRETERS.contains(&stem) && args.iter().any(|a| a.starts_with('-')) {
        return Some("interpreter");
    }
    None
}

impl Policy {
    /// Parses and checks `text` (from `origin`, named in errors): rule programs and file dirs are
    /// canonicalized, the run-as user looked up and checked against the agent's own uid.
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Policy> {
        let file: File = toml::from_str(text).with_context(|| format!("{}", origin.display()))?;
        let at = |what: String| format!("{}: {what}", origin.display());
        let mut rules = Vec::with_capacity(file.rule.len());
        for mut rule in file.rule {
            if !rule.program.is_absolute() {
                bail!(at(format!(
                    "rule program {} must be an absolute path",
                    rule.program.display()
                )));
            }
            rule.program = std::fs::canonicalize(&rule.program)
                .with_context(|| at(format!("rule program {}", rule.program.display())))?;
            if rule.args.is_some() && rule.args_prefix.is_some() {
                bail!(at(format!(
                    "rule for {}: give `args` or `args_prefix`, not both",
                    rule.program.display()
                )));
            }
            rules.push(rule);
        }
        let run_as = match &file.run_as {
            None => None,
            Some(name) => {
                let user = lookup_user(name).with_context(|| at(format!("run_as = {name:?}")))?;
                let me = rustix::process::getuid().as_raw();
                if me != 0 && me != user.uid {
                    bail!(at(format!(
                        "run_as = {name:?}: the agent runs as uid {me}, not root, so it cannot run jobs as uid {}; start it as root or drop run_as",
                        user.uid
                    )));
                }
                Some(user)
            }
        };
        let max_runtime = match &file.max_runtime {
            None => None,
            Some(text) => Some(parse_duration(text).ok_or_else(|| {
                anyhow::anyhow!(at(format!(
                    "max_runtime = {text:?}: not a duration like 90s, 10m, 2h"
                )))
            })?),
        };
        let file_dirs = match file.file_dirs {
            None if file.mode == Mode::AllowAll => None,
            None => Some(Vec::new()),
            Some(dirs) => {
                let mut out = Vec::with_capacity(dirs.len());
                for dir in dirs {
                    let canon = std::fs::canonicalize(&dir)
                        .with_context(|| at(format!("file_dirs entry {}", dir.display())))?;
                    if !canon.is_dir() {
                        bail!(at(format!(
                            "file_dirs entry {} is not a directory",
                            dir.display()
                        )));
                    }
                    out.push(canon);
                }
                Some(out)
            }
        };
        Ok(Policy {
            mode: file.mode,
            allow_shell: file.allow_shell,
            rules,
            run_as,
            max_runtime,
            allow_env: file.allow_env,
            file_dirs,
            services: file.services,
            services_off: file.services_off,
        })
    }

    /// Reads `path`; a missing file is allow-all only when `required` is false.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Policy> {
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Policy::default())
            }
            Err(e) => Err(e).with_context(|| format!("reading the policy file {}", path.display())),
        }
    }

    /// What the gateway may know of it.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            mode: self.mode.name().into(),
            allow_shell: self.allow_shell,
            rules: u32::try_from(self.rules.len()).unwrap_or(u32::MAX),
            run_as: self.run_as.as_ref().map(|u| u.name.clone()),
            max_runtime_s: self.max_runtime.map(|d| d.as_secs()),
            file_dirs: self
                .file_dirs
                .as_ref()
                .map(|d| d.iter().map(|p| p.display().to_string()).collect()),
            services: self.services,
            reload_error: None,
        }
    }

    /// Checks one exec request; `default_timeout` is used when the request says 0. `agent_path` is
    /// the agent's own PATH (what the child gets unless the request sets one).
    pub fn check_exec(
        &self,
        spec: &ExecSpec,
        default_timeout: Duration,
        agent_path: Option<&str>,
    ) -> Result<Plan, Refused> {
        let asked = match spec.timeout_s {
            0 => default_timeout,
            s => Duration::from_secs(s),
        };
        let timeout = self.max_runtime.map_or(asked, |cap| asked.min(cap));
        let plan = |program: PathBuf, arg0: Option<String>, args: Vec<String>| Plan {
            program,
            arg0,
            args,
            run_as: self.run_as.clone(),
            timeout,
        };
        match self.mode {
            Mode::DenyAll => {
                return Err(Refused::new("deny-all", "this node runs no commands"));
            }
            Mode::AllowAll => {
                return match (&spec.command, &spec.argv) {
                    (Some(line), None) => Ok(plan(
                        "/bin/sh".into(),
                        None,
                        vec!["-c".into(), line.clone()],
                    )),
                    (None, Some(argv)) if !argv.is_empty() => {
                        Ok(plan(argv[0].clone().into(), None, argv[1..].to_vec()))
                    }
                    // Malformed requests are reported by exec.rs, as before.
                    _ => Ok(plan(PathBuf::new(), None, Vec::new())),
                };
            }
            Mode::Allowlist => {}
        }
        for name in spec.env.keys() {
            if LOADER_ENV.iter().any(|p| matches_name(p, name))
                && !self.allow_env.iter().any(|p| matches_name(p, name))
            {
                return Err(Refused::new(
                    "env",
                    format!(
                        "the job sets {name}, a loader/startup variable allow_env does not name"
                    ),
                ));
            }
        }
        let argv = match (&spec.command, &spec.argv) {
            (Some(line), None) => {
                if !self.allow_shell {
                    return Err(Refused::new(
                        "allow_shell",
                        "shell strings (`command`) are refused on this node; send `argv`",
                    ));
                }
                return Ok(plan(
                    "/bin/sh".into(),
                    None,
                    vec!["-c".into(), line.clone()],
                ));
            }
            (None, Some(argv)) if !argv.is_empty() => argv,
            _ => return Ok(plan(PathBuf::new(), None, Vec::new())),
        };
        let path = spec.env.get("PATH").map(String::as_str).or(agent_path);
        let program = resolve(&argv[0], path, spec.cwd.as_deref().map(Path::new))
            .map_err(|why| Refused::new("allowlist", why))?;
        let args = &argv[1..];
        if self.rules.iter().any(|r| r.matches(&program, args)) {
            let shown = program.display().to_string();
            return Ok(plan(program, Some(shown), args.to_vec()));
        }
        let listed = self.rules.iter().any(|r| r.program == program);
        if let (Some(kind), false) = (wrapper_kind(&program, args), listed) {
            return Err(Refused::new(
                if kind == "wrapper" {
                    "wrapper"
                } else {
                    "interpreter"
                },
                format!(
                    "{} (from {:?}) runs other programs or code; no rule lists it",
                    program.display(),
                    argv[0]
                ),
            ));
        }
        Err(Refused::new(
            "allowlist",
            if listed {
                format!(
                    "{} is listed, but not with these arguments",
                    program.display()
                )
            } else {
                format!("no rule lists {} (from {:?})", program.display(), argv[0])
            },
        ))
    }

    /// Whether a stream to the declared service `name` may be opened now.
    pub fn check_service(&self, name: &str) -> Result<(), Refused> {
        if !self.services {
            return Err(Refused::new(
                "services",
                "the node's owner turned all services off (services = false)",
            ));
        }
        if self.services_off.iter().any(|s| s == name) {
            return Err(Refused::new(
                "services_off",
                format!("the node's owner turned service {name:?} off (services_off)"),
            ));
        }
        Ok(())
    }

    /// Checks a file transfer's path (`put`: the file to write, `get`: the file to read).
    pub fn check_file(&self, op: &str, path: &Path) -> Result<(), Refused> {
        let Some(dirs) = &self.file_dirs else {
            return Ok(());
        };
        if dirs.is_empty() {
            return Err(Refused::new(
                "file_dirs",
                "this node takes no file transfers",
            ));
        }
        // `put` replaces the final name (a rename), so its directory is what must be inside.
        let real = if op == "put" {
            match (path.parent(), path.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)),
                _ => {
                    return Err(Refused::new(
                        "file_dirs",
                        format!("{}: not a file path", path.display()),
                    ))
                }
            }
        } else {
            std::fs::canonicalize(path)
        }
        .map_err(|e| {
            Refused::new(
                "file_dirs",
                format!("{}: {}", path.display(), crate::exec::describe(&e)),
            )
        })?;
        if dirs.iter().any(|d| real.starts_with(d)) {
            Ok(())
        } else {
            Err(Refused::new(
                "file_dirs",
                format!("{} is outside the allowed directories", path.display()),
            ))
        }
    }
}

/// Resolves `name` as execvp would with `path` (and `cwd` for relative names with a slash), then
/// canonicalizes it: the program that will actually run.
pub fn resolve(name: &str, path: Option<&str>, cwd: Option<&Path>) -> Result<PathBuf, String> {
    let found = if name.contains('/') {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            match cwd {
                Some(c) => c.join(p),
                None => std::env::current_dir().map_err(|e| e.to_string())?.join(p),
            }
        }
    } else {
        let dirs = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
        dirs.split(':')
            .map(|d| {
                if d.is_empty() {
                    Path::new(".")
                } else {
                    Path::new(d)
                }
            })
            .map(|d| d.join(name))
            .find(|c| is_executable(c))
            .ok_or_else(|| format!("{name:?} is not found in PATH"))?
    };
    let canon = std::fs::canonicalize(&found)
        .map_err(|e| format!("{}: {}", found.display(), crate::exec::describe(&e)))?;
    if !is_executable(&canon) {
        return Err(format!("{} is not an executable file", canon.display()));
    }
    Ok(canon)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `90`, `90s`, `10m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => t.split_at(at),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn lookup_user(name: &str) -> anyhow::Result<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && f[0] == name).then(|| {
                Some(User {
                    name: name.into(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].into(),
                })
            })?
        })
        .next()
        .ok_or_else(|| anyhow::anyhow!("no such user in /etc/passwd"))
}
