//! `gateway`: runs on the public VM. See README.md for the tour.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod bus;
mod cli;
mod client;
mod health;
mod pairing;
mod refusal;
mod registry;
mod runinfo;
mod serve;
mod sshd;
mod tokens;

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
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<u8> {
    use cli::{Command, TokenCommand};
    let dir = cli.data_dir.as_path();
    match cli.command {
        Command::Serve(args) => serve::run(dir, args)?,
        Command::Join(c) => client::join(dir, c)?,
        Command::Nodes(c) => client::nodes(dir, c)?,
        Command::Token(TokenCommand::Create { role, ttl, subject }) => {
            let identity = burrow_core::identity::Identity::load(&dir.join("gateway.key"))?;
            let (token, _) = tokens::Tokens::new(&identity)?.issue(
                &subject,
                tokens::Role::parse(&role)?,
                ttl,
            )?;
            println!("{token}");
        }
        Command::Exec(args) => return Ok(client::exec(dir, args)?.clamp(0, 255) as u8),
    }
    Ok(0)
}
