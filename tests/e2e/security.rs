//! What must be refused: bad bearer tokens and roles, and local users poking a node's forwarded port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use burrow_core::identity::Identity;
use burrow_core::protocol::{write_plain, ExecSpec, Message, Role};
use burrow_core::secure::handshake;
use serde_json::json;

use crate::util::{closes, Agent, Gateway};

#[test]
fn tokens_and_roles_are_enforced() {
    let gw = Gateway::start();
    let (status, body) = gw.api_as("not-a-token", "GET", "/api/v1/nodes", None);
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("invalid token"),
        "{body}"
    );
    // A well-formed token signed by another gateway's key.
    let other = Gateway::start();
    let (status, _) = gw.api_as(&other.token("gateway"), "GET", "/api/v1/nodes", None);
    assert_eq!(status, 401);
    let (status, _) = gw.api_as("", "GET", "/api/v1/status", None);
    assert_eq!(status, 401);
    // Healthz needs nothing.
    let (status, body) = gw.api_as("", "GET", "/healthz", None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    // Viewers read but cannot run or administer.
    let viewer = gw.token("viewer");
    assert_eq!(gw.api_as(&viewer, "GET", "/api/v1/nodes", None).0, 200);
    assert_eq!(
        gw.api_as(
            &viewer,
            "POST",
            "/api/v1/nodes/x/exec",
            Some(json!({"command": "true"}))
        )
        .0,
        403
    );
    let operator = gw.token("operator");
    assert_eq!(
        gw.api_as(&operator, "POST", "/api/v1/join-tokens", Some(json!({})))
            .0,
        403
    );
}

/// Gateway → agent connection with the gateway's real key, recording what the "gateway" sent.
struct Recorder {
    inner: TcpStream,
    sent: Vec<u8>,
}
impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}
impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sent.extend_from_slice(buf);
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn exec_frame(path: &std::path::Path) -> Message {
    Message::Exec {
        id: 1,
        job: "e2e-job".into(),
        spec: ExecSpec {
            command: Some(format!("touch {}", path.display())),
            timeout_s: 10,
            ..ExecSpec::default()
        },
    }
}

#[test]
fn local_clients_on_the_forwarded_port_cannot_run_anything() {
    let gw = Gateway::start();
    let _agent = Agent::start(&gw.join(&[]), "target");
    gw.wait_status("target", "online");
    let port = gw.node("target")["ports"][0].as_u64().unwrap() as u16;
    let marker = gw.dir.path().join("pwned");
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };

    // 1. Garbage, then an Exec frame without any handshake.
    let mut s = connect();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x00\x00\x05garbage")
        .unwrap();
    let _ = write_plain(&mut s, &exec_frame(&marker));
    assert!(closes(&mut s), "agent kept a garbage connection open");

    // 2. A handshake with a key that is not the pinned gateway key.
    let mut s = connect();
    let err = handshake(
        &mut s,
        &Identity::generate("mallory"),
        Role::Gateway,
        |_| true,
    );
    assert!(
        err.is_err() || {
            let _ = write_plain(&mut s, &exec_frame(&marker));
            closes(&mut s)
        }
    );

    // 3. Record a genuine handshake made with the gateway's own key (the positive control: it can
    //    run a command), then replay the recording on a new connection.
    let gateway_key = Identity::load(&gw.data().join("gateway.key")).unwrap();
    let control = gw.dir.path().join("control");
    let mut rec = Recorder {
        inner: connect(),
        sent: Vec::new(),
    };
    let mut channel = handshake(&mut rec, &gateway_key, Role::Gateway, |_| true).unwrap();
    channel
        .sealer
        .write_message(&mut rec, &exec_frame(&control))
        .unwrap();
    let recorded = rec.sent.clone();
    loop {
        match channel.opener.read_message(&mut rec).unwrap() {
            Message::Exit { .. } => break,
            Message::Data { .. } | Message::Heartbeat(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        control.exists(),
        "the positive control did not run: the test could not detect a breach"
    );
    let mut s = connect();
    // The recording holds the Hello, the sealed Auth and the sealed Exec: replayed on a new
    // connection (new ephemeral keys on the agent's side), none of it opens.
    s.write_all(&recorded).unwrap();
    let _ = write_plain(&mut s, &exec_frame(&marker));
    assert!(closes(&mut s), "agent accepted a replayed handshake");

    assert!(!marker.exists(), "a command ran without authentication");
    // And the node is still healthy.
    let (status, out) = gw.exec("target", json!({"command": "echo ok"}));
    assert_eq!((status, out["stdout"].as_str()), (200, Some("ok\n")));
}

#[test]
fn the_node_key_line_only_allows_forwarding() {
    let gw = Gateway::start();
    let agent = Agent::start(&gw.join(&[]), "locked");
    gw.wait_status("locked", "online");
    let keys = std::fs::read_to_string(gw.data().join("sshd/authorized_keys")).unwrap();
    let line = keys
        .lines()
        .find(|l| l.ends_with("burrow-node:locked"))
        .unwrap();
    assert!(
        line.starts_with("restrict,port-forwarding,command=\"/bin/false\""),
        "{line}"
    );
    assert_eq!(
        line.matches("permitlisten=\"127.0.0.1:").count(),
        2,
        "{line}"
    );
    // With the node's own key, OpenSSH's client can neither run a command nor listen elsewhere.
    let key = agent.dir.path().join("data/agent.key");
    let ssh = |args: &[&str]| {
        crate::util::ssh_client(gw.ssh.port(), &key)
            .args(args)
            .output()
            .unwrap()
    };
    // Logged in (exit 1 is the forced /bin/false, 255 would be ssh failing), but nothing ran.
    let out = ssh(&["root@127.0.0.1", "echo", "breached"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("breached"));
    // Its own second port may be forwarded (the positive control) ...
    let ports = gw.node("locked")["ports"].clone();
    let own = format!("127.0.0.1:{}:127.0.0.1:1", ports[1]);
    let out = ssh(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &own,
        "root@127.0.0.1",
        "true",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... the API port may not.
    let squat = format!("127.0.0.1:{}:127.0.0.1:1", gw.api.port());
    let out = ssh(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &squat,
        "root@127.0.0.1",
        "true",
    ]);
    assert_eq!(
        out.status.code(),
        Some(255),
        "a node could listen on the API port"
    );
}
