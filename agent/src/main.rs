//! `agent`: runs on each node behind NAT. See README.md.
#![deny(unsafe_code)] // one exception: exec::pty::controlling_terminal (pre_exec)

mod cgroup;
mod cli;
#[cfg(test)]
mod config;
mod exec;
mod files;
mod gateway_api;
mod install;
mod job;
mod jobs;
mod metrics;
mod pairing;
mod policy;
mod reaper;
mod run;
mod service;
mod services;
mod state;
mod tunnel;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = burrow_core::settings::parse::<cli::Cli>(Path::new("/etc/burrow/agent.toml"))
        .map_err(anyhow::Error::from);
    if let Ok(cli) = &cli {
        burrow_core::settings::init_logging(cli.log);
    }
    match cli.and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: error: {e:#}");
            match e.downcast_ref::<run::Revoked>() {
                Some(_) => ExitCode::from(run::Revoked::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let dir = || state::DataDir::open(&cli.data_dir);
    match cli.command {
        cli::Command::Run {
            join,
            profile,
            max_concurrent,
            policy,
            service,
            max_streams,
            link,
        } => run::run(
            &dir()?,
            join.as_deref(),
            &profile,
            run::Serving {
                max_concurrent: max_concurrent.into(),
                policy: policy.as_deref(),
                services: services::Services::new(service, max_streams)?,
            },
            link,
        ),
        cli::Command::Join { join, profile } => {
            let state = pairing::join(&dir()?, &join, &profile)?;
            println!("paired with {} as {:?}", state.gateway.ssh, state.name);
            Ok(())
        }
        cli::Command::Id => {
            let identity = dir()?.identity()?;
            println!(
                "{}\n{}",
                identity.public_line(),
                identity.public().fingerprint()
            );
            Ok(())
        }
        // Does not open the data dir: install only names it in the unit (and creates it).
        cli::Command::Install(args) => install::run(&cli.data_dir, cli.log, &args),
    }
}
