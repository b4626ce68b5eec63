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
    /// Alerts the gateway raised: firing now, or resolved.
    #[command(
        subcommand,
        after_long_help = "Example:\n  gateway alerts ls --state firing"
    )]
    Alerts(AlertsCommand),
    /// The fleet at a glance: nodes by state, alerts, jobs, the data dir's room, sshd.
    #[command(after_long_help = "Example:\n  gateway status\n  gateway status --json | jq .nodes")]
    Status {
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// API bearer tokens.
    #[command(
        subcommand,
        after_long_help = "Example:\n  T=$(gateway token create --role operator --ttl 8h)\n  curl -H \"Authorization: Bearer $T\" localhost:18789/api/v1/nodes"
    )]
    Token(TokenCommand),
    /// Run a command on one node or many, like ssh: prints the output, exits with the node's code.
    #[command(after_long_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// An interactive shell (or COMMAND) on a node's pseudo-terminal, like `ssh -t`.
    #[command(after_long_help = SHELL_HELP)]
    Shell(ShellArgs),
    /// Jobs (every exec and file transfer is one): list, show, cancel, follow.
    #[command(
        subcommand,
        after_long_help = "Example:\n  gateway jobs ls --state running\n  gateway jobs attach 7e62b9f72bc9d384c809e42f3980d7e3"
    )]
    Jobs(JobsCommand),
    /// Copy a file to nodes or from a node, streamed (any size), checked by SHA-256.
    #[command(after_long_help = CP_HELP)]
    Cp(CpArgs),
    /// Bridge stdin/stdout to a service the node declares (agent run --service), e.g. its sshd.
    #[command(after_long_help = CONNECT_HELP)]
    Connect {
        /// The node's id (its name).
        node: String,
        /// The service, as the node declared it (`gateway nodes show NODE` lists them).
        service: String,
    },
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
    /// Check the audit trail's hash chain offline; names the first bad entry and exits non-zero.
    /// Without FILE: every file of the data dir's trail, and the chain head kept in its store
    /// (which catches a tail cut at a line boundary). With FILE: that file's chain alone, unless
    /// --head.
    #[command(
        after_long_help = "Example:\n  gateway audit verify\n  gateway audit verify /backup/audit.log\n  gateway --data-dir /var/lib/burrow/gateway audit verify --head copy.log"
    )]
    Verify {
        /// One log file to check [default: audit.log and its rotated files in the data dir].
        file: Option<PathBuf>,
        /// With FILE: also check it against the chain head in the data dir's store.
        #[arg(long, requires = "file")]
        head: bool,
    },
    /// List the trail, oldest first, read from the files (no running gateway needed).
    #[command(
        after_long_help = "Example:\n  gateway audit ls --since 2026-12-01T00:00:00Z --node pi-1\n  gateway audit ls --actor alice --json"
    )]
    Ls(AuditLsArgs),
    /// Every entry of every file of the trail, in order, as JSON lines on stdout.
    #[command(after_long_help = "Example:\n  gateway audit export > audit-$(date +%F).jsonl")]
    Export,
}

/// `gateway audit ls`.
#[derive(Debug, clap::Args)]
pub struct AuditLsArgs {
    /// Entries at or after this time: RFC 3339 (2026-12-01T10:00:00Z), Unix seconds, or an age
    /// (2h: the last two hours).
    #[arg(long)]
    pub since: Option<String>,
    /// Entries about this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Entries by this actor: token name, Unix user, or jti.
    #[arg(long)]
    pub actor: Option<String>,
    /// Entries with this action (`exec` also finds `exec.end`).
    #[arg(long)]
    pub action: Option<String>,
    /// Start at this seq (the `next` of an earlier page).
    #[arg(long)]
    pub cursor: Option<u64>,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// JSON lines, as stored, instead of a table.
    #[arg(long)]
    pub json: bool,
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
    /// Serve the API over HTTPS with this certificate chain (PEM; with --tls-key). Needed to
    /// listen beyond loopback without --insecure. Pairing is then served in plain HTTP on a port
    /// of its own on 127.0.0.1, reached by nodes through their SSH channel only.
    #[arg(
        long,
        env = "BURROW_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC; not encrypted). Keep it 0600.
    #[arg(
        long,
        env = "BURROW_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Output an exec answered whole (not streamed) keeps per stream and node, in bytes; the rest
    /// is dropped and counted (`truncated`, `dropped_bytes`). Streamed output has no cap.
    #[arg(long, env = "BURROW_MAX_ANSWER_BYTES", value_name = "BYTES", default_value_t = crate::api::DEFAULT_ANSWER_LIMIT)]
    pub max_answer_bytes: usize,
    /// On SIGTERM/SIGINT, how long running commands may finish before they are cancelled and the
    /// gateway exits (keep it under systemd's TimeoutStopSec, 90 s by default).
    #[arg(long, env = "BURROW_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Nodes the gateway takes, approved and pending together; joins beyond it are refused
    /// (rejected nodes do not count).
    #[arg(long, env = "BURROW_MAX_NODES", value_name = "N", default_value_t = crate::pairing::DEFAULT_MAX_NODES)]
    pub max_nodes: usize,
    /// Also serve GET /metrics WITHOUT a token on this address, for a network you trust (e.g. the
    /// VPN interface Prometheus scrapes from); the API port's /metrics needs a viewer token.
    #[arg(long, env = "BURROW_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// A node's link on which nothing has arrived for this long is dropped and the node is offline
    /// (a quiet link is pinged after a quarter of it); 2s to 10m.
    #[arg(long, env = "BURROW_DEAD_AFTER", default_value = "20s", value_parser = parse_duration)]
    pub dead_after: Duration,
    /// Alert rules, hook and webhook (TOML, docs/alerts.md), reloaded on SIGHUP [default:
    /// alerts.toml beside the config file if it exists, else the built-in rules].
    #[arg(long, env = "BURROW_ALERT_RULES", value_name = "FILE")]
    pub alert_rules: Option<PathBuf>,
    /// How long metric history (`/api/v1/nodes/ID/metrics`) is kept: 1-minute points for the last
    /// hour, 10-minute averages before that.
    #[arg(long, env = "BURROW_METRICS_RETENTION", default_value = "1day", value_parser = parse_duration)]
    pub metrics_retention: Duration,
    /// `audit.log` is rotated to `audit.log.1` (older ones shifted up) once it reaches this size;
    /// the hash chain goes on across the files.
    #[arg(long, env = "BURROW_AUDIT_MAX_BYTES", value_name = "BYTES", default_value_t = crate::audit::DEFAULT_MAX_BYTES)]
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (at least 1); older ones are deleted.
    #[arg(long, env = "BURROW_AUDIT_KEEP", value_name = "N", default_value_t = crate::audit::DEFAULT_KEEP as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_keep: u64,
    /// Also delete rotated audit files last written longer ago than this (e.g. 90days) [default:
    /// keep by count only].
    #[arg(long, env = "BURROW_AUDIT_MAX_AGE", value_parser = parse_duration)]
    pub audit_max_age: Option<Duration>,
    /// How often requests refused at the token check (401/403) are written to the audit log, one
    /// entry per source, route and reason with a count (and at shutdown).
    #[arg(long, env = "BURROW_AUDIT_DENIED_EVERY", default_value = "1m", value_parser = parse_duration)]
    pub audit_denied_every: Duration,
}

impl ServeArgs {
    /// The audit log's rotation, retention and denied-request interval.
    pub fn audit_settings(&self) -> crate::audit::Settings {
        crate::audit::Settings {
            max_bytes: self.audit_max_bytes,
            keep: self.audit_keep as usize,
            max_age: self.audit_max_age,
            denied_every: self.audit_denied_every,
        }
    }
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
    /// List join tokens, newest first: uses left, expiry, manual, state (never the secret).
    #[command(after_long_help = "Example:\n  gateway join ls\n  gateway join ls --json")]
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token: it cannot pair any more, and its enrollment key leaves sshd at once.
    /// Nodes that already joined with it are not affected.
    #[command(after_long_help = "Example:\n  gateway join ls\n  gateway join revoke 3f9a0c1d2e4b")]
    Revoke {
        /// The token's id, as `gateway join ls` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes: state, labels, CPU, memory, fullest disk, temperature, last heartbeat.
    #[command(
        after_long_help = "Example:\n  gateway nodes ls\n  gateway nodes ls --json | jq '.nodes[].id'"
    )]
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one node: its state and why, every figure of its last heartbeat, the recent trend.
    #[command(
        after_long_help = "Example:\n  gateway nodes show pi-1\n  gateway nodes show pi-1 --since 6h"
    )]
    Show {
        name: String,
        /// How far back the trend goes.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        since: Duration,
        /// Print the API's JSON (the node, and its history) instead.
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
    /// Set or remove a node's labels (KEY=VALUE sets, KEY= removes) and capabilities. Only
    /// operators can: a node's own labels are fixed when it is approved. Audited.
    #[command(
        after_long_help = "Example:\n  gateway nodes label pi-1 site=home rack=2 old=\n  gateway nodes label pi-1 --capabilities gpio,camera\n  gateway exec label:site=home uptime"
    )]
    Label {
        name: String,
        /// KEY=VALUE to set, KEY= to remove.
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Replace the capabilities with this comma-separated list ("" for none).
        #[arg(long, value_name = "LIST")]
        capabilities: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first.
    #[command(
        after_long_help = "Example:\n  gateway alerts ls\n  gateway alerts ls --state resolved --json"
    )]
    Ls {
        /// Only alerts in this state.
        #[arg(long, value_enum)]
        state: Option<AlertFilter>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `gateway alerts ls --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertFilter {
    Firing,
    Resolved,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new API bearer token (minted by the running gateway, which audits who asked).
    #[command(
        after_long_help = "Example:\n  gateway token create --role viewer --ttl 30d --name grafana"
    )]
    Create {
        /// gateway (admin), operator (exec and read) or viewer (read only).
        #[arg(long, default_value = "operator")]
        role: String,
        /// Lifetime.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Who the token is for (the JWT subject, shown by `token ls`) [default: by-<your Unix user>].
        #[arg(long, alias = "subject")]
        name: Option<String>,
    },
    /// List the API tokens minted, newest first: JTI NAME ROLE CREATED EXPIRES STATE (never a token).
    #[command(
        after_long_help = "Example:\n  gateway token ls\n  gateway token ls --json | jq '.tokens[].jti'"
    )]
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token: refused from its next request on, also after a restart. Tokens it
    /// minted stay valid (revoke them too).
    #[command(
        after_long_help = "Example:\n  gateway token ls\n  gateway token revoke 5c0e9d1f2a3b4c5d6e7f8091"
    )]
    Revoke {
        /// The token's jti, as `gateway token ls` shows it.
        jti: String,
    },
}

const EXEC_HELP: &str = "\
TARGET: a node id, a list `pi-1,pi-2`, '*' (every node), `glob:pi-*`, `cap:gpu`, `label:site=home`;
terms joined by `,` must all match (`cap:gpu,label:site=home`); `any:<target>` picks the least
loaded one. The words after TARGET are joined with spaces and run by the node's /bin/sh -c, as ssh
does, so quote what the local shell must not expand.

Output: one node's stdout and stderr come through unchanged and the exit code is the node's
(124: timed out, 128+N: killed by signal N, 130: cancelled by Ctrl-C, 255: it did not run, or the
gateway could not be asked). With several nodes each line is prefixed `[node] `, a summary line
goes to stderr, and the exit code is 0 only if every node succeeded, else 1 (255 if the gateway
could not be asked). Usage errors exit 2. Piped stdin streams to one node's command, or is sent
whole (up to 8 MiB) to each of several; -n sends none. Ctrl-C cancels the job and waits for its
end; a second Ctrl-C stops waiting at once.

Example:
  gateway exec pi-1 uname -a
  gateway exec pi-1 'echo $HOME && ls -la'
  gateway exec 'glob:pi-*' --batch 25% --timeout 10m 'apt-get update && apt-get -y upgrade'
  echo hi | gateway exec pi-1 cat
  gateway exec --async --queue-ttl 1h label:site=home reboot";

const SHELL_HELP: &str = "\
Without COMMAND: the node user's login shell (`exec \"${SHELL:-/bin/sh}\" -l`). The command runs on a
pseudo-terminal of the local terminal's size and TERM; the local terminal is raw meanwhile, so
Ctrl-C, Ctrl-Z and Ctrl-D go to the remote side, and a resized window resizes the remote terminal.
The exit code is the remote command's (128+N if a signal N killed it, 255 if it did not run). With
stdin not a terminal (a pipe) there is no pseudo-terminal: stdin streams as with `gateway exec`.
The node's exec policy applies to the command as to any exec. Default time limit: a week.

Example:
  gateway shell pi-1
  gateway shell pi-1 htop
  gateway shell --timeout 2h pi-1 'tmux new -A -s main'";

const CP_HELP: &str = "\
A remote side is TARGET:/absolute/path: the target ends at the last `:` before the path's leading
`/`, so `label:site=home:/opt/x` is target `label:site=home`, path `/opt/x`. Uploads go to every
node of the target; downloads come from one node. `-` is stdin (upload) or stdout (download). A
remote path ending in `/` gets the local file's name; a local directory gets the remote one's.
Prints bytes and SHA-256 per node (checked against what was sent); exits 1 if any node failed.

Example:
  gateway cp ./agent pi-1:/usr/local/bin/agent --mode 0755
  gateway cp ./agent 'glob:pi-*':/usr/local/bin/agent
  gateway cp pi-1:/var/log/syslog ./pi-1.syslog
  tar cz ./site | gateway cp - pi-1:/tmp/site.tgz";

/// `gateway exec`: where, what, and how the job runs (every option maps to a field of
/// `POST /api/v1/exec`).
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Where to run (see below): a node id, a list, '*', glob:, cap:, label:, any:.
    pub target: String,
    /// The command: words joined with spaces and run by /bin/sh -c on the node, as with ssh.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub args: Vec<String>,
    /// Run COMMAND as a program and its arguments, without a shell.
    #[arg(long)]
    pub argv: bool,
    /// Print the job's JSON answer (all nodes' results and the summary) instead of the output.
    #[arg(long)]
    pub json: bool,
    /// Run on at most N nodes (or P% of them) at once, a sliding window (Salt's -b).
    #[arg(long, value_name = "N|P%", value_parser = parse_batch)]
    pub batch: Option<Batch>,
    /// The node's FIFO lane: commands in one lane of a node run one at a time, in order
    /// [default: the gateway's, "default"].
    #[arg(long, value_name = "NAME")]
    pub lane: Option<String>,
    /// Queue the command on offline nodes for this long (e.g. 1h) instead of reporting them offline.
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub queue_ttl: Option<u64>,
    /// Kill the command after this long (e.g. 90s, 10m; a bare number is seconds)
    /// [default: the gateway's, 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub timeout: Option<u64>,
    /// Do not wait: print the job id and exit 0 (follow it with `gateway jobs attach ID`).
    #[arg(long = "async")]
    pub detach: bool,
    /// An environment variable for the command (repeatable).
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The command's working directory on the node.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Send no stdin (the command reads EOF), like ssh -n; stdin is a terminal or /dev/null: the same.
    #[arg(short = 'n', long)]
    pub no_stdin: bool,
}

/// `gateway shell`: the node and the command.
#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// The node (one node id).
    pub node: String,
    /// The command (words joined with spaces, run by /bin/sh -c) [default: the login shell].
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
    /// Kill the command after this long (e.g. 8h) [default: 7d, the longest].
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub timeout: Option<u64>,
}

/// `--batch`: a count of nodes or a percentage of the target's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// At most this many nodes at once.
    Count(u32),
    /// At most this percentage (1–100) of the nodes at once.
    Percent(u8),
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    #[command(
        after_long_help = "Example:\n  gateway jobs ls --node pi-1 --state failed --limit 20"
    )]
    Ls {
        /// Only jobs that ran (or were to run) on this node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled, ...).
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// At most this many jobs.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only jobs older than this one (the next page: printed at the end of a full page).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a job: what ran where, each node's state, exit code and stored output.
    #[command(
        after_long_help = "Example:\n  gateway jobs show 7e62b9f72bc9d384c809e42f3980d7e3 --json"
    )]
    Show {
        /// The job id.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: queued nodes never run it, running ones are killed (process group).
    #[command(
        after_long_help = "Example:\n  gateway jobs cancel 7e62b9f72bc9d384c809e42f3980d7e3"
    )]
    Cancel {
        /// The job id.
        id: String,
    },
    /// Follow a job's output from its start, then live; prints and exits like `gateway exec`.
    ///
    /// Ctrl-C detaches and leaves the job running (`gateway jobs cancel ID` stops it).
    #[command(
        after_long_help = "Example:\n  gateway jobs attach 7e62b9f72bc9d384c809e42f3980d7e3"
    )]
    Attach {
        /// The job id.
        id: String,
    },
}

const CONNECT_HELP: &str = "\
Examples:
  ssh -o ProxyCommand='gateway connect %h ssh' pi@pi-1
  # from a laptop, through the VM (in ~/.ssh/config: see docs/services.md)
  ssh -o ProxyCommand='ssh vm gateway connect %h ssh' pi@pi-1

The node declares what may be reached: agent run --service ssh=127.0.0.1:22. Nothing else on it is
reachable; its owner can turn services off in the policy file (services_off). Audited.";

/// `gateway cp SOURCE DEST`: one side local (or `-`), the other `TARGET:/path`.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// A local file (`-`: stdin), or NODE:/path to download.
    pub source: String,
    /// TARGET:/path to upload to, or a local file or directory (`-`: stdout) for a download.
    pub dest: String,
    /// Mode of the uploaded file on the nodes, in octal [default: the local file's mode].
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub mode: Option<u32>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30m, 1h, 7d)"))
}

/// Whole seconds for the API: `90s`, `10m`, `1h`, or a bare number of seconds (the old
/// `--timeout 600`); a fraction rounds up, zero is refused.
fn parse_seconds(text: &str) -> Result<u64, String> {
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => parse_duration(text)?,
    };
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    if seconds == 0 {
        return Err("must be at least 1s".into());
    }
    Ok(seconds)
}

fn parse_batch(text: &str) -> Result<Batch, String> {
    let bad = || format!("{text:?} is not a batch size: give a count (10) or a percentage (25%)");
    match text.strip_suffix('%') {
        Some(p) => match p.parse::<u8>() {
            Ok(p @ 1..=100) => Ok(Batch::Percent(p)),
            _ => Err(bad()),
        },
        None => match text.parse::<u32>() {
            Ok(n @ 1..) => Ok(Batch::Count(n)),
            _ => Err(bad()),
        },
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not K=V")),
    }
}

/// `0755`, `755` or `0o755`: permission bits (setuid/setgid/sticky included), nothing else.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 0755")),
    }
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
