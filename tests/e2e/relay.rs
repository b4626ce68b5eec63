//! The relay attack of issue 6: a local user who holds one of a node's two loopback ports (while the
//! agent, after a reconnect, listens on the other) relays the gateway's dial to the agent. With
//! protocol v1 it passed the handshake through and then injected its own `Exec`, which ran on the
//! node. With v2 it carries only ciphertext: it reads nothing and every frame it adds ends the link.
//!
//! The relay is its own process (`tests/src/bin/burrow-relay.rs`) run as uid 65534 with `setpriv`:
//! an unprivileged local user, as in the issue.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use burrow_core::identity::Identity;
use burrow_core::protocol::{write_plain, ExecSpec, Message, Role, VERSION};
use burrow_core::secure::handshake;
use serde_json::json;

use crate::util::{closes, wait_until, Agent, Gateway, Proc};

/// The `burrow-relay` process (tests/src/bin), run as uid 65534: what it carried and how to make it
/// inject, through the files of its directory.
struct Relay {
    dir: tempfile::TempDir,
    _proc: Proc,
}

impl Relay {
    /// Starts the relay as `nobody`; it takes `listen` as soon as it is free and relays to `agent`.
    fn start(listen: u16, agent: u16) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("burrow-relay")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        // A copy the unprivileged user can surely reach, wherever the checkout lives.
        let bin = dir.path().join("burrow-relay");
        std::fs::copy(env!("CARGO_BIN_EXE_burrow-relay"), &bin).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args([listen.to_string(), agent.to_string()])
            .arg(dir.path());
        let proc = Proc::spawn(cmd, dir.path().join("relay.log"));
        let listening = dir.path().join("listening");
        wait_until(
            Duration::from_secs(30),
            "the relay to hold the port",
            || listening.exists(),
        );
        assert_eq!(
            std::fs::read_to_string(&listening).unwrap(),
            "65534",
            "the relay must run unprivileged"
        );
        Relay { dir, _proc: proc }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// How many connections it has relayed.
    fn count(&self) -> usize {
        std::fs::read_to_string(self.file("connections"))
            .map(|c| c.parse().unwrap())
            .unwrap_or(0)
    }

    fn closed(&self, n: usize) -> bool {
        self.file(&format!("c{n}.closed")).exists()
    }

    fn to_agent(&self, n: usize) -> Vec<u8> {
        std::fs::read(self.file(&format!("c{n}.to_agent"))).unwrap_or_default()
    }

    fn to_gateway(&self, n: usize) -> Vec<u8> {
        std::fs::read(self.file(&format!("c{n}.to_gateway"))).unwrap_or_default()
    }

    /// Has the relay write `bytes` into connection `n` towards the agent, and waits until it has.
    fn inject(&self, n: usize, bytes: &[u8]) {
        let tmp = self.file(&format!(".inject-{n}"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::rename(&tmp, self.file(&format!("inject-{n}"))).unwrap();
        let done = self.file(&format!("inject-{n}.done"));
        wait_until(Duration::from_secs(10), "the relay to inject", || {
            done.exists()
        });
    }

    /// Everything the relay carried, both ways, on every connection.
    fn carried(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for n in 0..self.count() {
            all.extend(self.to_agent(n));
            all.extend(self.to_gateway(n));
        }
        all
    }
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

    // The attacker (uid 65534) takes the first port (the one the gateway dials first) as soon as it
    // is free, and the agent, restarted, can only listen on the second.
    agent.proc.terminate();
    gw.wait_status("relayed", "offline");
    let relay = Relay::start(first, second);
    agent.restart();
    gw.wait_status("relayed", "online");
    assert!(
        relay.count() >= 1,
        "the gateway did not come through the relay"
    );
    let link = relay.count() - 1;

    let marker = gw.dir.path().join("pwned");
    let runs = gw.dir.path().join("runs");
    // The output marker is not in the command text, so seeing it would mean reading output.
    let legit = json!({
        "command": format!("printf 'RELAY%sSECRET\\n' -OUTPUT-; echo run >> {}", runs.display())
    });
    let before = relay.to_gateway(link).len();
    let (status, out) = gw.exec("relayed", legit.clone());
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("RELAY-OUTPUT-SECRET\n")),
        "the positive control (a legitimate command through the relay) failed: {out}"
    );
    assert!(
        !relay.closed(link) && relay.to_gateway(link).len() > before + 20,
        "the command went through the relayed link"
    );

    // 1. Replay the gateway's Exec frame (the largest sealed frame it sent) into the same connection.
    let exec_frame = frames(&relay.to_agent(link))
        .into_iter()
        .skip(2)
        .max_by_key(|f| f.len())
        .expect("the gateway sent sealed frames");
    relay.inject(link, &exec_frame);
    wait_until(
        Duration::from_secs(10),
        "the agent to drop the link",
        || relay.closed(link),
    );

    // 2. On the gateway's next (relayed) connection: a plaintext v2 Exec, as v1 accepted.
    let next = |after: usize| {
        wait_until(Duration::from_secs(30), "the gateway to redial", || {
            relay.count() > after && !relay.closed(relay.count() - 1)
        });
        gw.wait_status("relayed", "online");
        relay.count() - 1
    };
    let link = next(link + 1);
    let mut plain = Vec::new();
    write_plain(&mut plain, &touch(&marker)).unwrap();
    relay.inject(link, &plain);
    wait_until(
        Duration::from_secs(10),
        "the agent to drop the link",
        || relay.closed(link),
    );

    // 3. A crafted frame: a plausible length and random "ciphertext".
    let link = next(link + 1);
    let mut crafted = 64u32.to_be_bytes().to_vec();
    crafted.extend_from_slice(&burrow_core::random_bytes::<64>());
    relay.inject(link, &crafted);
    wait_until(
        Duration::from_secs(10),
        "the agent to drop the link",
        || relay.closed(link),
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
    next(link + 1);
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
