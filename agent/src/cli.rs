//! Command-line interface of the `agent` binary.

use std::path::PathBuf;

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
    Run {
        /// The join string from `gateway join create`; ignored once this node is paired.
        #[arg(long, env = "BURROW_JOIN")]
        join: Option<String>,
        #[command(flatten)]
        profile: Profile,
    },
    /// Pair with a gateway and exit (waits while the request is pending approval).
    Join {
        /// The join string from `gateway join create`.
        join: String,
        #[command(flatten)]
        profile: Profile,
    },
    /// Print this node's public key and fingerprint.
    Id,
}

/// How the node describes itself when it pairs.
#[derive(Debug, Clone, clap::Args)]
pub struct Profile {
    /// The node's name (its id in the gateway); defaults to the hostname.
    #[arg(long, env = "BURROW_NAME")]
    pub name: Option<String>,
    /// Something this node offers (repeatable), e.g. --capability gpio.
    #[arg(long = "capability", value_name = "C")]
    pub capabilities: Vec<String>,
    /// A label (repeatable), e.g. --label site=home.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("labels are KEY=VALUE, got {text:?}")),
    }
}
