//! Command-line interface of the `gateway` binary: what each subcommand takes.
//!
//! A flag with `env = "BURROW_X"` is a setting: also the key `x` of the config file, which
//! `config.rs` adds as `--config FILE` (default `/etc/burrow/gateway.toml`). Precedence: flag >
//! environment > file > default. Per-command options (`--ttl`, `--role`, ...) are not settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// burrow gateway: control a fleet of machines behind NAT over SSH from one public VM.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, max_term_width = 100)]
pub struct Cli {
    /// Where the gateway keeps its keys, registry, sshd files and audit log.
    #[arg(
        long,
        global = true,
        env = "BURROW_DATA_DIR",
        default_value = "/var/lib/burrow/gateway"
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
    /// Run the gateway: REST API plus a supervised, locked-down OpenSSH sshd.
    #[command(
        after_long_help = "Example:\n  gateway --data-dir ./burrow-data serve --ssh 0.0.0.0:2222"
    )]
    Serve(ServeArgs),
    /// Join strings for new nodes.
    #[command(
        subcommand,
        after_long_help = "Example:\n  gateway join create --ttl 1h --uses 3"
    )]
    Join(JoinCommand),
    /// List nodes; approve, reject or revoke them.
    #[command(
        subcommand,
        after_long_help = "Example:\n  gateway nodes ls\n  gateway nodes approve pi-1"
    )]
    Nodes(NodesCommand),
    /// API bearer tokens.
    #[command(
        subcommand,
        after_long_help = "Example:\n  T=$(gateway token create --role operator --ttl 8h)\n  curl -H \"Authorization: Bearer $T\" localhost:18789/api/v1/nodes"
    )]
    Token(TokenCommand),
    /// Run a command on a node and print its output; exits with the remote exit code.
    #[command(
        after_long_help = "Example (the node's name, then the command after --):\n  gateway exec pi-1 -- uname -a\n  gateway exec pi-1 --timeout 600 -- sh -c 'apt-get update && apt-get -y upgrade'"
    )]
    Exec(ExecArgs),
    /// Write a hardened systemd unit and the config file, then print how to start the service.
    #[command(
        after_long_help = "Example:\n  sudo gateway install --ssh-public vm.example.com:2222\n  gateway install --print config"
    )]
    Install(InstallArgs),
    /// The audit log.
    #[command(subcommand, after_long_help = "Example:\n  gateway audit verify")]
    Audit(AuditCommand),
    /// Copy the gateway's database to FILE, safely while it runs; restoring: docs/backup.md.
    #[command(after_long_help = "Example:\n  gateway backup /srv/backup/burrow-$(date +%F).db")]
    Backup {
        /// The backup file to write (refused if it exists, unless --force).
        file: std::path::PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check an audit log's hash chain offline; names the first bad entry and exits non-zero.
    #[command(after_long_help = "Example:\n  gateway audit verify /backup/audit.log")]
    Verify {
        /// The log to check [default: audit.log in the data dir].
        file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the REST API. Keep it on loopback: it has no TLS.
    #[arg(long, env = "BURROW_API", default_value = "127.0.0.1:18789")]
    pub api: SocketAddr,
    /// Address the managed sshd listens on (the gateway's only public port). Port 0 picks a free one.
    #[arg(long, env = "BURROW_SSH", default_value = "0.0.0.0:2222")]
    pub ssh: SocketAddr,
    /// HOST:PORT that nodes dial to reach sshd, written into join strings (default: this host's
    /// hostname and the --ssh port).
    #[arg(long, env = "BURROW_SSH_PUBLIC")]
    pub ssh_public: Option<String>,
    /// The sshd binary to supervise.
    #[arg(long, env = "BURROW_SSHD", default_value = "/usr/sbin/sshd")]
    pub sshd: PathBuf,
    /// Use the system's own sshd (set up with `gateway install --sshd-snippet`) instead of running one;
    /// join strings then pin its --host-key and default to this host's port 22.
    #[arg(long, env = "BURROW_SYSTEM_SSHD")]
    pub system_sshd: bool,
    /// With --system-sshd: the system sshd's Ed25519 host key (public half).
    #[arg(
        long,
        env = "BURROW_HOST_KEY",
        default_value = "/etc/ssh/ssh_host_ed25519_key.pub"
    )]
    pub host_key: PathBuf,
    /// Allow the API to listen on a non-loopback address without TLS.
    #[arg(long, env = "BURROW_INSECURE")]
    pub insecure: bool,
    /// Output an exec answered whole (not streamed) keeps per stream and node, in bytes; the rest
    /// is dropped and counted (`truncated`, `dropped_bytes`). Streamed output has no cap.
    #[arg(long, env = "BURROW_MAX_ANSWER_BYTES", value_name = "BYTES", default_value_t = crate::api::DEFAULT_ANSWER_LIMIT)]
    pub max_answer_bytes: usize,
    /// On SIGTERM/SIGINT, how long running commands may finish before they are cancelled and the
    /// gateway exits (keep it under systemd's TimeoutStopSec, 90 s by default).
    #[arg(long, env = "BURROW_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where `gateway install` writes, and what goes into the config file it writes.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Directory of the unit `burrow-gateway.service`.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Directory of the config file `gateway.toml`.
    #[arg(long, value_name = "DIR", default_value = "/etc/burrow")]
    pub config_dir: PathBuf,
    /// The gateway binary the service runs (nothing is copied) [default: this binary].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Print instead of writing: the unit, the config file, or both (no value).
    #[arg(long, value_enum, value_name = "WHAT", num_args = 0..=1, default_missing_value = "all")]
    pub print: Option<Print>,
    /// Replace an existing config file.
    #[arg(long)]
    pub force: bool,
    /// Only print the sshd_config snippet that lets nodes in through the system's own sshd (for
    /// `serve --system-sshd`).
    #[arg(long)]
    pub sshd_snippet: bool,
    /// With --sshd-snippet: the account nodes log in as, not root [default: the current user].
    #[arg(long, requires = "sshd_snippet")]
    pub user: Option<String>,
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

#[derive(Debug, Subcommand)]
pub enum JoinCommand {
    /// Create a join string (printed on stdout).
    #[command(
        after_long_help = "Example (on the VM, then on the node with the string it printed):\n  gateway join create --ttl 1h --uses 3 --manual\n  agent run --join burrow1.… --name pi-1"
    )]
    Create {
        /// How long the string stays valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Nodes joining with it wait as `pending` until `gateway nodes approve NAME`.
        #[arg(long)]
        manual: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes.
    #[command(after_long_help = "Example:\n  gateway nodes ls --json")]
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending node.
    #[command(after_long_help = "Example:\n  gateway nodes approve pi-1")]
    Approve { name: String },
    /// Reject a node: it loses all access at once (link cut, commands cancelled, sessions killed), but
    /// keeps its name and ports, so `approve` brings it back.
    #[command(after_long_help = "Example:\n  gateway nodes reject pi-1")]
    Reject { name: String },
    /// Remove a node for good: access ends at once, the agent is told and stops, the name is free.
    #[command(after_long_help = "Example:\n  gateway nodes revoke pi-1")]
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new API bearer token (minted by the running gateway, which audits who asked).
    #[command(
        after_long_help = "Example:\n  gateway token create --role viewer --ttl 30d --subject grafana"
    )]
    Create {
        /// gateway (admin), operator (exec and read) or viewer (read only).
        #[arg(long, default_value = "operator")]
        role: String,
        /// Lifetime.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Who the token is for (the JWT subject) [default: by-<your Unix user>].
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The node's name.
    pub node: String,
    /// Kill the command after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30m, 1h, 7d)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

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
