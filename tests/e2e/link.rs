//! What rides the secure link: an approved node's heartbeats and metrics. Its SSH key therefore
//! needs, and gets, no channel to the API or anywhere else: it can only listen on its two ports.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;

use crate::util::{wait_until, Agent, Gateway};

#[test]
fn approved_node_key_opens_no_channel_and_stays_online_with_metrics() {
    let gw = Gateway::start();
    let agent = Agent::start(&gw.join(&[]), "linked");
    gw.wait_status("linked", "online");
    // The first heartbeat goes out on the link as soon as it is up.
    wait_until(Duration::from_secs(10), "metrics from the link", || {
        gw.node("linked")["metrics"]["uptime_s"].as_u64().is_some()
    });
    let keys = std::fs::read_to_string(gw.data().join("sshd/authorized_keys")).unwrap();
    let line = keys
        .lines()
        .find(|l| l.ends_with("burrow-node:linked"))
        .unwrap();
    // Its only `permitopen` is port 1, which stands for "none" (see `key_lines`).
    assert_eq!(line.matches("permitopen=").count(), 1, "{line}");
    assert!(line.contains("permitopen=\"127.0.0.1:1\""), "{line}");

    // With the node's own key, OpenSSH's client can open no channel: not to the API, not to any
    // other local port (a listener of ours that must see no connection).
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let key = agent.dir.path().join("data/agent.key");
    let ssh = |args: &[&str]| {
        crate::util::ssh_client(gw.ssh.port(), &key)
            .args(args)
            .output()
            .unwrap()
    };
    for target in [gw.api.port(), other.local_addr().unwrap().port()] {
        let out = ssh(&["-W", &format!("127.0.0.1:{target}"), "root@127.0.0.1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "-W to port {target}: {err}");
        assert!(
            err.contains("administratively prohibited") || err.contains("open failed"),
            "-W to port {target} failed for another reason: {err}"
        );
    }
    assert!(other.accept().is_err(), "a node key reached a local port");

    // `-L` too: the local end binds, but the channel behind it is refused, so HTTP gets no answer.
    let local = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = local.local_addr().unwrap().port();
    drop(local);
    let mut forward = crate::util::ssh_client(gw.ssh.port(), &key)
        .args(["-N", "-L"])
        .arg(format!("127.0.0.1:{lport}:127.0.0.1:{}", gw.api.port()))
        .arg("root@127.0.0.1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut answered = None;
    wait_until(
        Duration::from_secs(15),
        "the -L listener",
        || match std::net::TcpStream::connect(("127.0.0.1", lport)) {
            Ok(mut s) => {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                answered = Some(reply);
                true
            }
            Err(_) => false,
        },
    );
    let _ = forward.kill();
    let _ = forward.wait();
    let reply = answered.unwrap();
    assert!(
        reply.is_empty(),
        "the API answered through a node key's -L: {}",
        String::from_utf8_lossy(&reply)
    );

    // And the node is still online, its metrics fresh, commands running.
    assert_eq!(gw.node("linked")["status"], "online");
    let (status, out) = gw.exec("linked", json!({"command": "echo linked"}));
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("linked\n")),
        "{out}"
    );
    assert!(
        !agent.proc.log_text().contains("heartbeat failed"),
        "{}",
        agent.proc.log_text()
    );
}
