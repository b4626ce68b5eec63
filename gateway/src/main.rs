//! `gateway`: runs on the public VM. See README.md for the tour.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod backup;
mod bus;
mod cli;
mod client;
#[cfg(test)]
mod config;
mod health;
mod install;
mod jobs;
mod metrics;
mod nonce;
mod pairing;
mod refusal;
mod registry;
mod runinfo;
mod serve;
mod sshd;
mod store;
#[cfg(test)]
mod testing;
mod tokens;
mod unix_http;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = burrow_core::settings::parse::<cli::Cli>(Path::new("/etc/burrow/gateway.toml"))
        .map_err(anyhow::Error::from);
    if let Ok(cli) = &cli {
        burrow_core::settings::init_logging(cli.log);
    }
    match cli.and_then(run) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<u8> {
    use cli::Command;
    let dir = cli.data_dir.as_path();
    match cli.command {
        Command::Serve(args) => serve::run(dir, args)?,
        Command::Join(c) => client::tokens::join(dir, c)?,
        Command::Nodes(c) => client::nodes(dir, c)?,
        Command::Alerts(c) => client::health::alerts(dir, c)?,
        Command::Status { json } => client::health::status(dir, json)?,
        Command::Token(c) => client::tokens::token(dir, c)?,
        Command::Exec(args) => return Ok(client::exec::run(dir, args)),
        Command::Jobs(c) => return Ok(client::jobs::run(dir, c)),
        Command::Cp(args) => return Ok(client::cp::run(dir, args)),
        Command::Install(args) => install::run(dir, cli.log, &args)?,
        Command::Audit(c) => return client::audit::run(dir, c),
        Command::Backup { file, force } => {
            let report = match force {
                false => backup::run(dir, &file)?,
                true => backup::run_with(dir, &file, true)?,
            };
            println!("{report}");
        }
    }
    Ok(0)
}
