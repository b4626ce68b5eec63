//! The gateway as a library: the modules behind the `gateway` binary (src/main.rs, which only parses
//! the command line and calls [`run`]). Nothing here is a stable API; the library exists so that the
//! fuzz targets in core/fuzz can call the same parsers the gateway runs (see [`fuzzing`]).
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

pub use cli::Cli;

/// Every route of the API as `(method, pattern)`, in table order: what the RBAC matrix
/// (tests/e2e/rbac.rs) checks that it lists, so a new route cannot skip it.
#[doc(hidden)]
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    api::routes::ROUTES.iter().map(|r| (r.method, r.pattern))
}

/// Runs one parsed command line; the exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
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
        Command::Shell(args) => return Ok(client::shell::run(dir, args)),
        Command::Jobs(c) => return Ok(client::jobs::run(dir, c)),
        Command::Cp(args) => return Ok(client::cp::run(dir, args)),
        Command::Connect { node, service } => {
            return Ok(client::connect::run(dir, &node, &service))
        }
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

/// Entry points for the fuzz targets (core/fuzz): the gateway's own parsers of untrusted input,
/// reachable from outside the crate. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::api::exec::{parse_request, ExecRequest};
    pub use crate::api::http_limits;
    pub use crate::api::routes::EXEC_BODY;
    pub use crate::refusal::{Kind, Refusal};
}
