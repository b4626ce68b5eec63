//! The attacker of `tests/e2e/relay.rs`, as its own process so the test can run it as an unprivileged
//! user (uid 65534, via `setpriv`): it squats a node's first port on 127.0.0.1 (waiting until it is
//! free), relays every connection to the agent's port, records everything it carries, and injects into
//! a connection whatever the test drops into its directory.
//!
//! Usage: `burrow-relay LISTEN_PORT AGENT_PORT DIR`. In `DIR` (all plain files, so root and uid 65534
//! can share them): `listening` (written once bound: the relay's uid), `connections` (how many are
//! relayed), `c<N>.to_agent` / `c<N>.to_gateway` (bytes carried), `c<N>.closed` (the agent hung up),
//! and `inject-<N>` (bytes to write into connection N towards the agent; renamed `inject-<N>.done`).
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: burrow-relay LISTEN_PORT AGENT_PORT DIR");
        std::process::exit(2);
    }
    let listen: u16 = args[1].parse().expect("LISTEN_PORT");
    let agent: u16 = args[2].parse().expect("AGENT_PORT");
    let dir = PathBuf::from(&args[3]);
    // The node's old session may still hold the port for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", listen)) {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("binding 127.0.0.1:{listen}: {e}");
                std::process::exit(1);
            }
        }
    };
    publish(&dir, "listening", uid().as_bytes());
    let mut relayed = 0usize;
    for gateway in listener.incoming() {
        let Ok(gateway) = gateway else { continue };
        let Ok(agent) = TcpStream::connect(("127.0.0.1", agent)) else {
            continue;
        };
        relay(&dir, relayed, gateway, agent);
        relayed += 1;
        publish(&dir, "connections", relayed.to_string().as_bytes());
    }
}

fn relay(dir: &Path, n: usize, gateway: TcpStream, agent: TcpStream) {
    let to_agent = Arc::new(Mutex::new(agent.try_clone().unwrap()));
    let closed = Arc::new(AtomicBool::new(false));
    // Gateway → agent, recorded, under the lock the injector also takes (injections land between
    // chunks, not inside one).
    {
        let (mut from, to) = (gateway.try_clone().unwrap(), to_agent.clone());
        let mut log = append(&dir.join(format!("c{n}.to_agent")));
        thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(k) = from.read(&mut buf) {
                if k == 0 {
                    break;
                }
                let _ = log.write_all(&buf[..k]);
                if to.lock().unwrap().write_all(&buf[..k]).is_err() {
                    break;
                }
            }
            let _ = to.lock().unwrap().shutdown(Shutdown::Both);
        });
    }
    // Agent → gateway, recorded.
    {
        let (mut from, mut to, closed) = (agent, gateway, closed.clone());
        let mut log = append(&dir.join(format!("c{n}.to_gateway")));
        let dir = dir.to_path_buf();
        thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(k) = from.read(&mut buf) {
                if k == 0 || log.write_all(&buf[..k]).is_err() || to.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
            closed.store(true, Ordering::Release);
            let _ = to.shutdown(Shutdown::Both);
            publish(&dir, &format!("c{n}.closed"), b"");
        });
    }
    // Injections the test asks for.
    let dir = dir.to_path_buf();
    thread::spawn(move || {
        let ask = dir.join(format!("inject-{n}"));
        while !closed.load(Ordering::Acquire) {
            if let Ok(bytes) = fs::read(&ask) {
                let _ = to_agent.lock().unwrap().write_all(&bytes);
                let _ = fs::rename(&ask, dir.join(format!("inject-{n}.done")));
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes a whole file under a temporary name and renames it, so a reader never sees half of it.
fn publish(dir: &Path, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The real uid, from /proc (no libc needed).
fn uid() -> String {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_string()
}
