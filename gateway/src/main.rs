//! `gateway`: runs on the public VM. See README.md for the tour; the modules are in src/lib.rs.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use burrow_gateway::Cli;

fn main() -> ExitCode {
    let cli = burrow_core::settings::parse::<Cli>(Path::new("/etc/burrow/gateway.toml"))
        .map_err(anyhow::Error::from);
    if let Ok(cli) = &cli {
        burrow_core::settings::init_logging(cli.log);
    }
    match cli.and_then(burrow_gateway::run) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
