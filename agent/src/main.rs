//! `agent`: runs on each node behind NAT. See README.md.
#![forbid(unsafe_code)]

mod cli;
mod exec;
mod gateway_api;
mod metrics;
mod pairing;
mod run;
mod service;
mod state;
mod tunnel;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let _ = simplelog::WriteLogger::init(
        cli.log,
        simplelog::ConfigBuilder::new()
            .set_time_format_rfc3339()
            .build(),
        std::io::stderr(),
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let dir = state::DataDir::open(&cli.data_dir)?;
    match cli.command {
        cli::Command::Run { join, profile } => run::run(&dir, join.as_deref(), &profile),
        cli::Command::Join { join, profile } => {
            let state = pairing::join(&dir, &join, &profile)?;
            println!("paired with {} as {:?}", state.gateway.ssh, state.name);
            Ok(())
        }
        cli::Command::Id => {
            let identity = dir.identity()?;
            println!(
                "{}\n{}",
                identity.public_line(),
                identity.public().fingerprint()
            );
            Ok(())
        }
    }
}
