//! Command-line interface of the `agent` binary.
//!
//! A flag with `env = "BURROW_X"` is a setting: also the key `x` of the config file, which
//! `config.rs` adds as `--config FILE` (default `/etc/burrow/agent.toml`). Precedence: flag >
//! environment > file > default.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// burrow agent: dials out to the gateway over SSH and serves its commands through a reverse tunnel.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, max_term_width = 100)]
pub struct Cli {
    /// Where the agent keeps its key, pins and token.
    #[arg(
        long,
        global = true,
        env = "BURROW_DATA_DIR",
        default_value = "/var/lib/burrow/agent"
    )]
    pub data_dir: PathBuf,
    /// Log verbosity: error, warn, info, debug, trace.
    #[arg(long, global = true, env = "BURROW_LOG", default_value = "info")]
    pub log: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join (if given a join string and not yet paired), then stay connected and serve commands.
    #[command(
        after_long_help = "Example (the string comes from `gateway join create` on the VM):\n  agent run --join burrow1.… --name pi-1 --label room=attic\n  agent run            # once paired"
    )]
    Run {
        /// The join string from `gateway join create`; ignored once this node is paired.
        #[arg(long, env = "BURROW_JOIN", hide_env_values = true)]
        join: Option<String>,
        #[command(flatten)]
        profile: Profile,
        /// Jobs (commands and file transfers) run at once at most; the gateway queues the rest.
        #[arg(
            long,
            value_name = "N",
            env = "BURROW_MAX_CONCURRENT",
            default_value_t = crate::run::DEFAULT_MAX_CONCURRENT,
            value_parser = clap::value_parser!(u16).range(1..)
        )]
        max_concurrent: u16,
        /// The node owner's exec policy (docs/policy.md), read at start and on SIGHUP. Default:
        /// `policy.toml` in the data dir, allow-all when that file does not exist; a file named
        /// here must exist.
        #[arg(long, value_name = "FILE", env = "BURROW_POLICY")]
        policy: Option<PathBuf>,
        /// A service on the node the gateway's operators may reach (`gateway connect NODE NAME`),
        /// as NAME=ADDR: `ssh=127.0.0.1:22`, `web=unix:/run/web.sock`. Repeat for more; nothing
        /// else on the node is reachable. The policy file can turn each off (docs/services.md).
        #[arg(
            long = "service",
            value_name = "NAME=ADDR",
            env = "BURROW_SERVICE",
            value_delimiter = ',',
            value_parser = crate::services::parse_declared
        )]
        service: Vec<crate::services::Declared>,
        /// Service streams open at once at most; more are refused.
        #[arg(
            long,
            value_name = "N",
            env = "BURROW_MAX_STREAMS",
            default_value_t = crate::services::DEFAULT_MAX_STREAMS
        )]
        max_streams: usize,
        #[command(flatten)]
        link: Link,
    },
    /// Pair with a gateway and exit (waits while the request is pending approval).
    #[command(after_long_help = "Example:\n  agent join burrow1.… --name pi-1")]
    Join {
        /// The join string from `gateway join create`.
        join: String,
        #[command(flatten)]
        profile: Profile,
    },
    /// Print this node's public key and fingerprint.
    #[command(
        after_long_help = "Example (compare with the fingerprint `gateway nodes ls --json` shows):\n  agent id"
    )]
    Id,
    /// Write a hardened systemd unit and the config file, then print how to start the service.
    #[command(after_long_help = "Example:\n  sudo agent install --join burrow1.… --name pi-1")]
    Install(InstallArgs),
}

/// Where `agent install` writes, and what goes into the config file it writes.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Directory of the unit `burrow-agent.service`.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Directory of the config file `agent.toml`.
    #[arg(long, value_name = "DIR", default_value = "/etc/burrow")]
    pub config_dir: PathBuf,
    /// The agent binary the service runs (nothing is copied) [default: this binary].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Join string for the config file: the service joins with it on its first start.
    #[arg(long, env = "BURROW_JOIN", hide_env_values = true)]
    pub join: Option<String>,
    #[command(flatten)]
    pub profile: Profile,
    /// Print instead of writing: the unit, the config file, or both (no value).
    #[arg(long, value_enum, value_name = "WHAT", num_args = 0..=1, default_missing_value = "all")]
    pub print: Option<Print>,
    /// Replace an existing config file.
    #[arg(long)]
    pub force: bool,
}

/// How the node keeps its link to the gateway.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Link {
    /// How often the node sends its heartbeat (health figures) to the gateway, e.g. 30s or 1m;
    /// each interval is drawn within ±10 % of it.
    #[arg(
        long,
        value_name = "DURATION",
        env = "BURROW_HEARTBEAT_INTERVAL",
        default_value = "30s",
        value_parser = parse_heartbeat_interval
    )]
    pub heartbeat_interval: Duration,
    /// A link to the gateway that stays silent this long is dead: dropped and dialed again. The
    /// agent pings a silent gateway after a quarter of it.
    #[arg(
        long,
        value_name = "DURATION",
        env = "BURROW_DEAD_AFTER",
        default_value = "20s",
        value_parser = parse_dead_after
    )]
    pub dead_after: Duration,
}

/// How the node describes itself when it pairs.
#[derive(Debug, Clone, clap::Args)]
pub struct Profile {
    /// The node's name (its id in the gateway); defaults to the hostname.
    #[arg(long, env = "BURROW_NAME")]
    pub name: Option<String>,
    /// Something this node offers (repeatable or comma-separated), e.g. --capability gpio.
    #[arg(
        long = "capability",
        value_name = "C",
        env = "BURROW_CAPABILITY",
        value_delimiter = ','
    )]
    pub capabilities: Vec<String>,
    /// A label (repeatable or comma-separated), e.g. --label site=home.
    #[arg(
        long = "label",
        value_name = "K=V",
        env = "BURROW_LABEL",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,
}

/// What `install --print` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// Both files, each after a `# PATH` line.
    All,
    /// The unit alone, e.g. for release artefacts: `install --print unit > burrow-NAME.service`.
    Unit,
    /// The config file alone.
    Config,
}

/// `30s`, `1m`, `1m30s`, `500ms`, `2h`, or a bare number of seconds (what a TOML integer becomes):
/// the gateway's duration syntax for the units a link setting needs, without humantime in the agent.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (examples: 30s, 1m, 1m30s, 90)");
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match rest[..unit].trim() {
            "ms" => Duration::from_millis(1),
            "s" | "sec" | "secs" => Duration::from_secs(1),
            "m" | "min" | "mins" => Duration::from_secs(60),
            "h" | "hr" | "hrs" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| scale.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    if text.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// `text` as a duration within `min..=max` (both whole seconds).
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < min || d > max {
        return Err(format!(
            "{text} is outside {}s..{}s",
            min.as_secs(),
            max.as_secs()
        ));
    }
    Ok(d)
}

fn parse_heartbeat_interval(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1), Duration::from_secs(3600))
}

/// At least 2 s: below that, scheduling hiccups on a small node would read as a dead link.
fn parse_dead_after(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(2), Duration::from_secs(600))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("labels are KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory;

    #[test]
    fn durations_parse_like_the_gateways() {
        let ok = |text: &str, secs: f64| {
            assert_eq!(
                super::parse_duration(text),
                Ok(Duration::from_secs_f64(secs)),
                "{text}"
            )
        };
        ok("30s", 30.0);
        ok("90", 90.0);
        ok("1m30s", 90.0);
        ok("1m 30s", 90.0);
        ok("2h", 7200.0);
        ok("1500ms", 1.5);
        ok(" 20s ", 20.0);
        for bad in [
            "",
            "s",
            "10x",
            "m5",
            "1.5s",
            "-3s",
            "99999999999999999999s",
            "5000000000h",
        ] {
            let err = super::parse_duration(bad).expect_err(bad);
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    /// Every subcommand says what it is in one line and shows how it is used (issue 12, point 8).
    #[test]
    fn every_subcommand_has_a_summary_and_an_example() {
        let gaps = burrow_core::settings::help_gaps(&super::Cli::command());
        assert!(
            gaps.is_empty(),
            "subcommands without a summary or an example: {gaps:?}"
        );
    }
}
