//! `gateway connect NODE SERVICE`: the CLI's stdin and stdout bridged to a stream to a service the
//! node declares (`POST /api/v1/nodes/{id}/services/{name}/connect`, an HTTP upgrade over the
//! gateway's socket), for `ssh -o ProxyCommand='gateway connect %h ssh' pi@pi-1`.
//!
//! stdin → stream on a thread of its own; its end shuts down the socket's write half (the node
//! then shuts down its socket's). stream → stdout on this thread; the stream's end (the service
//! closed its side, or the stream was reset) ends the command: exit 0. A refusal (not declared,
//! turned off, unreachable, node offline) is the API's message and exit 1.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;

use anyhow::Context;

use super::target::segment;
use super::{exit_code, json_answer, Client};
use crate::unix_http::{self, Upgraded};

pub fn run(data_dir: &Path, node: &str, service: &str) -> u8 {
    exit_code(connect(data_dir, node, service), 1)
}

fn connect(data_dir: &Path, node: &str, service: &str) -> anyhow::Result<u8> {
    let client = Client::open(data_dir)?;
    let path = format!(
        "/api/v1/nodes/{}/services/{}/connect",
        segment(node),
        segment(service)
    );
    let (mut from_node, to_node) =
        match unix_http::upgrade(&client.socket, &path, crate::api::SERVICE_STREAM)? {
            Upgraded::Stream { read, write } => (read, write),
            Upgraded::Refused(response) => {
                json_answer(response)?;
                anyhow::bail!("the gateway did not switch to a stream");
            }
        };
    let mut up = to_node
        .try_clone()
        .context("duplicating the gateway connection")?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if up.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = up.shutdown(Shutdown::Write);
        })
        .context("starting the stdin thread")?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_node.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the stream"),
        };
        // Flushed at once: a keystroke echoed by an ssh session must not wait in a buffer.
        if stdout
            .write_all(&buf[..n])
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    let _ = to_node.shutdown(Shutdown::Both);
    Ok(0)
}
