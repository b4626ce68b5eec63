//! The relay attack of issue 6: a local user who holds one of a node's two loopback ports (while the
//! agent, after a reconnect, listens on the other) relays the gateway's dial to the agent. With
//! protocol v1 it passed the handshake through and then injected its own `Exec`, which ran on the
//! node. With v2 it carries only ciphertext: it reads nothing and every frame it adds ends the link.
//!
//! The relay runs in the test process (as root here): binding a loopback port above 1024 and
//! connecting to another needs no privilege, so an unprivileged local user can do exactly the same.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use burrow_core::identity::Identity;
use burrow_core::protocol::{write_plain, ExecSpec, Message, Role, VERSION};
use burrow_core::secure::handshake;
use serde_json::json;

use crate::util::{wait_until, Agent, Gateway};

/// One relayed connection: what went each way, and a handle to inject bytes towards the agent.
struct Relayed {
    to_agent: Arc<Mutex<Vec<u8>>>,
    to_gateway: Arc<Mutex<Vec<u8>>>,
    /// The agent side of the connection, shared with the pump so injections land between chunks.
    agent_writer: Arc<Mutex<TcpStream>>,
    /// Set when the agent closed its side.
    agent_closed: Arc<AtomicBool>,
}

impl Relayed {
    fn inject(&self, bytes: &[u8]) {
        let _ = self.agent_writer.lock().unwrap().write_all(bytes);
    }

    fn closed(&self) -> bool {
        self.agent_closed.load(Ordering::Acquire)
    }
}

/// Listens on the squatted port and relays every connection to the agent's port.
struct Relay {
    connections: Arc<Mutex<Vec<Arc<Relayed>>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(listener: TcpListener, agent_port: u16) -> Relay {
        let connections = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let port = listener.local_addr().unwrap().port();
        let acceptor = thread::spawn({
            let (connections, stop) = (connections.clone(), stop.clone());
            move || {
                for gateway in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(gateway) = gateway else { continue };
                    let Ok(agent) = TcpStream::connect(("127.0.0.1", agent_port)) else {
                        continue;
                    };
                    let relayed = Arc::new(Relayed {
                        to_agent: Arc::default(),
                        to_gateway: Arc::default(),
                        agent_writer: Arc::new(Mutex::new(agent.try_clone().unwrap())),
                        agent_closed: Arc::default(),
                    });
                    pump(gateway.try_clone().unwrap(), &relayed);
                    connections.lock().unwrap().push(relayed);
                    // Agent → gateway.
                    let back = connections.lock().unwrap().last().unwrap().clone();
                    thread::spawn(move || {
                        let (mut from, mut to) = (agent, gateway);
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            back.to_gateway.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        back.agent_closed.store(true, Ordering::Release);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            connections,
            stop,
            port,
            acceptor: Some(acceptor),
        }
    }

    fn latest(&self) -> Option<Arc<Relayed>> {
        self.connections.lock().unwrap().last().cloned()
    }

    fn count(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Everything the relay carried, both ways, on every connection.
    fn carried(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for c in self.connections.lock().unwrap().iter() {
            all.extend_from_slice(&c.to_agent.lock().unwrap());
            all.extend_from_slice(&c.to_gateway.lock().unwrap());
        }
        all
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Gateway → agent, recording and writing under the shared writer lock.
fn pump(mut gateway: TcpStream, relayed: &Arc<Relayed>) {
    let relayed = relayed.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = gateway.read(&mut buf) {
            if n == 0 {
                break;
            }
            relayed
                .to_agent
                .lock()
                .unwrap()
                .extend_from_slice(&buf[..n]);
            if relayed
                .agent_writer
                .lock()
                .unwrap()
                .write_all(&buf[..n])
                .is_err()
            {
                break;
            }
        }
        let _ = relayed
            .agent_writer
            .lock()
            .unwrap()
            .shutdown(Shutdown::Both);
    });
}

/// The whole frames (prefix included) in a recorded stream, the plaintext Hello first.
fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= stream.len() {
        let len = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        if at + 4 + len > stream.len() {
            break;
        }
        out.push(stream[at..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
}

fn touch(path: &Path) -> Message {
    Message::Exec {
        id: 77,
        job: "relay-job".into(),
        spec: ExecSpec {
            command: Some(format!("touch {}", path.display())),
            timeout_s: 10,
            ..ExecSpec::default()
        },
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn relayed_handshake_runs_nothing_and_reads_no_output() {
    let gw = Gateway::start();
    let mut agent = Agent::start(&gw.join(&[]), "relayed");
    gw.wait_status("relayed", "online");
    let ports = gw.node("relayed")["ports"].clone();
    let (first, second) = (
        ports[0].as_u64().unwrap() as u16,
        ports[1].as_u64().unwrap() as u16,
    );

    // The attacker takes the first port (the one the gateway dials first) as soon as it is free,
    // and the agent, restarted, can only listen on the second.
    agent.proc.terminate();
    gw.wait_status("relayed", "offline");
    let mut squat = None;
    wait_until(Duration::from_secs(30), "the first port to be free", || {
        squat = TcpListener::bind(("127.0.0.1", first)).ok();
        squat.is_some()
    });
    let relay = Relay::start(squat.unwrap(), second);
    agent.restart();
    gw.wait_status("relayed", "online");
    assert!(
        relay.count() >= 1,
        "the gateway did not come through the relay"
    );
    let link = relay.latest().unwrap();

    let marker = gw.dir.path().join("pwned");
    let runs = gw.dir.path().join("runs");
    // The output marker is not in the command text, so seeing it would mean reading output.
    let legit = json!({
        "command": format!("printf 'RELAY%sSECRET\\n' -OUTPUT-; echo run >> {}", runs.display())
    });
    let before = link.to_gateway.lock().unwrap().len();
    let (status, out) = gw.exec("relayed", legit.clone());
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("RELAY-OUTPUT-SECRET\n")),
        "the positive control (a legitimate command through the relay) failed: {out}"
    );
    assert!(
        !link.closed() && link.to_gateway.lock().unwrap().len() > before + 20,
        "the command went through the relayed link"
    );

    // 1. Replay the gateway's Exec frame (the largest sealed frame it sent) into the same connection.
    let sent = link.to_agent.lock().unwrap().clone();
    let exec_frame = frames(&sent)
        .into_iter()
        .skip(2)
        .max_by_key(|f| f.len())
        .expect("the gateway sent sealed frames");
    link.inject(&exec_frame);
    wait_until(
        Duration::from_secs(10),
        "the agent to drop the link",
        || link.closed(),
    );

    // 2. On the gateway's next (relayed) connection: a plaintext v2 Exec, as v1 accepted.
    let next = |before: usize| {
        wait_until(Duration::from_secs(30), "the gateway to redial", || {
            relay.count() > before && relay.latest().is_some_and(|l| !l.closed())
        });
        gw.wait_status("relayed", "online");
        relay.latest().unwrap()
    };
    let link = next(relay.count() - 1);
    let mut plain = Vec::new();
    write_plain(&mut plain, &touch(&marker)).unwrap();
    link.inject(&plain);
    wait_until(
        Duration::from_secs(10),
        "the agent to drop the link",
        || link.closed(),
    );

    // 3. A crafted frame: a plausible length and random "ciphertext".
    let link = next(relay.count() - 1);
    let mut crafted = 64u32.to_be_bytes().to_vec();
    crafted.extend_from_slice(&burrow_core::random_bytes::<64>());
    link.inject(&crafted);
    wait_until(
        Duration::from_secs(10),
        "the agent to drop the link",
        || link.closed(),
    );

    // 4. The attacker's own sessions straight to the agent: a v1 Hello, then a v2 handshake with its
    //    own key; each followed by a plaintext Exec.
    let mut v1 = TcpStream::connect(("127.0.0.1", second)).unwrap();
    v1.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = vec![1u8, 0, 0, 0, 0];
    hello.extend_from_slice(&1u16.to_be_bytes());
    hello.push(1);
    hello.extend_from_slice(&[7; 64]);
    v1.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
    v1.write_all(&hello).unwrap();
    let _ = write_plain(&mut v1, &touch(&marker));
    assert!(closes(&mut v1), "the agent kept a v1 connection open");
    let mut own = TcpStream::connect(("127.0.0.1", second)).unwrap();
    own.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mallory = Identity::generate("mallory");
    assert!(handshake(&mut own, &mallory, Role::Gateway, |_| true).is_err());
    let _ = write_plain(&mut own, &touch(&marker));
    assert!(
        closes(&mut own),
        "the agent kept an impostor's connection open"
    );

    // The node still works, through the relay, and the attacker got nowhere.
    next(relay.count() - 1);
    let (status, out) = gw.exec("relayed", legit);
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("RELAY-OUTPUT-SECRET\n")),
        "{out}"
    );
    assert!(!marker.exists(), "an injected command ran on the node");
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        2,
        "the replayed Exec ran again"
    );
    let carried = relay.carried();
    assert!(carried.len() > 1000, "the relay carried the links");
    assert!(
        !contains(&carried, b"RELAY-OUTPUT-SECRET"),
        "the relay read command output"
    );
    assert!(
        !contains(&carried, b"RELAY%sSECRET"),
        "the relay read the command"
    );
    assert_eq!(VERSION, 2);
}

/// Whether the peer closes the connection (EOF or reset) before the read timeout, skipping what it
/// says first (its Hello).
fn closes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Idle connections to a node's port (anyone on the gateway host can open them) are capped while
/// unauthenticated and dropped after the handshake timeout, and the node keeps working.
#[test]
fn idle_connections_to_the_node_port_are_capped_and_dropped() {
    let gw = Gateway::start();
    let _agent = Agent::start(&gw.join(&[]), "crowded");
    gw.wait_status("crowded", "online");
    let port = gw.node("crowded")["ports"][0].as_u64().unwrap() as u16;
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // Each either gets a slot (and is dropped after 5 s) or is closed at once; none stays open.
    let started = std::time::Instant::now();
    let closed: Vec<(bool, Duration)> = idle
        .into_iter()
        .map(|mut s| thread::spawn(move || (closes(&mut s), started.elapsed())))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(closed.iter().all(|c| c.0), "an idle connection stayed open");
    // At most MAX_UNAUTHENTICATED (8) wait out the 5 s handshake timeout; the rest go at once.
    let at_once = closed
        .iter()
        .filter(|c| c.1 < Duration::from_secs(2))
        .count();
    assert!(
        at_once >= 40 - 8,
        "only {at_once} of 40 were closed at once"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    // The established link was not disturbed.
    let (status, out) = gw.exec("crowded", json!({"command": "echo fine"}));
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("fine\n")),
        "{out}"
    );
}
