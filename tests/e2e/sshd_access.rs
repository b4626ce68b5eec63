//! What each kind of key may do at the gateway's sshd, driven with OpenSSH's own client: enrollment
//! keys (join tokens) and pending nodes' keys reach the API and cannot listen anywhere.

use burrow_core::join::{enrollment_identity, JoinTicket};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::util::{agent_join, bin, isolate, ssh_client, wait_until, Agent, Gateway, Proc};

/// `ssh OPTIONS 127.0.0.1 true` with `key` as `user` to the sshd on `port`, with no config, agent or
/// known_hosts of ours. Exit 1 is a login (the forced /bin/false), 255 a refusal.
fn ssh(port: u16, key: &Path, user: &str, options: &[&str]) -> Output {
    ssh_command(port, key, user, options)
        .args(["127.0.0.1", "true"])
        .output()
        .unwrap()
}

fn ssh_command(port: u16, key: &Path, user: &str, options: &[&str]) -> Command {
    let mut cmd = ssh_client(port, key);
    cmd.args(["-o", "ExitOnForwardFailure=yes", "-l", user])
        .args(options);
    cmd
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Regression: enrollment keys derived from a join string could listen on `127.0.0.1:1` (sshd runs as
/// root, and `permitlisten` can only allow). Now they log in as the enrollment user, whose sshd
/// settings forbid listening, and are not valid for the node user at all.
#[test]
fn enrollment_key_cannot_listen() {
    let gw = Gateway::start();
    // A node online, so that there is a node port to try to squat.
    let _node = Agent::start(&gw.join(&[]), "squatted");
    gw.wait_status("squatted", "online");
    let node_port = gw.node("squatted")["ports"][0].as_u64().unwrap();

    let join = gw.join(&["--uses", "2"]);
    let ticket = JoinTicket::decode(&join).unwrap();
    let enroll = ticket
        .enroll_user
        .clone()
        .expect("a gateway running as root has an enrollment user");
    assert_ne!(enroll, ticket.user);
    let key = gw.dir.path().join("enroll_key");
    enrollment_identity(&ticket.secret).save(&key).unwrap();

    // The enrollment key reaches the API port (what pairing needs): a real HTTP answer through -W.
    let mut api = ssh_command(
        gw.ssh.port(),
        &key,
        &enroll,
        &["-W", &format!("127.0.0.1:{}", gw.api.port())],
    )
    .arg("127.0.0.1")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // stdin stays open until the answer is in: its end would half-close the channel first.
    let mut request = api.stdin.take().unwrap();
    request
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    api.stdout
        .take()
        .unwrap()
        .read_to_string(&mut answer)
        .unwrap();
    drop(request);
    let out = api.wait_with_output().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer:?} {}",
        said(&out)
    );

    // Positive control: the same command line with a node's own key on its own port does listen
    // (exit 1 is the forced /bin/false after the forward was set up), so a refusal below is sshd's.
    let node_key = _node.dir.path().join("data/agent.key");
    let own = format!("127.0.0.1:{}:127.0.0.1:1", gw.node("squatted")["ports"][1]);
    let out = ssh(gw.ssh.port(), &node_key, &ticket.user, &["-R", &own]);
    assert_eq!(out.status.code(), Some(1), "control: {}", said(&out));

    // A pending node's own key logs in the same way (to ask whether it was approved).
    let pending = Agent::start(&gw.join(&["--manual"]), "waiting");
    gw.wait_status("waiting", "pending");
    let pending_key = pending.dir.path().join("data/agent.key");
    for listen in [
        "127.0.0.1:1".to_string(),
        format!("127.0.0.1:{node_port}"),
        format!("0.0.0.0:{}", node_port + 2),
        format!("[::]:{}", node_port + 3),
        format!("[::1]:{}", node_port + 4),
    ] {
        let spec = format!("{listen}:127.0.0.1:1");
        for key in [&key, &pending_key] {
            let out = ssh(gw.ssh.port(), key, &enroll, &["-R", &spec]);
            assert_eq!(out.status.code(), Some(255), "-R {spec}: {}", said(&out));
            assert!(
                said(&out).contains("remote port forwarding failed"),
                "-R {spec} with {} failed for another reason: {}",
                key.display(),
                said(&out)
            );
        }
    }
    // Their one channel is the API: a node's port (where a relay would sit) is refused.
    let other = ssh(
        gw.ssh.port(),
        &key,
        &enroll,
        &["-W", &format!("127.0.0.1:{node_port}")],
    );
    assert_eq!(other.status.code(), Some(255), "{}", said(&other));
    assert!(said(&other).contains("prohibited"), "{}", said(&other));
    // Nor are these keys any good as the node user, where listening is allowed.
    for key in [&key, &pending_key] {
        let out = ssh(
            gw.ssh.port(),
            key,
            &ticket.user,
            &["-R", "127.0.0.1:1:127.0.0.1:1"],
        );
        assert_eq!(out.status.code(), Some(255), "{}", said(&out));
        assert!(said(&out).contains("Permission denied"), "{}", said(&out));
    }
    // And a node's own key is not an enrollment login.
    let out = ssh(gw.ssh.port(), &node_key, &enroll, &[]);
    assert!(said(&out).contains("Permission denied"), "{}", said(&out));

    // Pairing with that join string still works, end to end.
    let out = agent_join(&join, "after-the-probes");
    assert!(out.status.success(), "{}", said(&out));
    assert!(gw.node("after-the-probes")["approved_at"].is_string());
}

/// `gateway ARGS` as `nobody`, so that its sshd runs unprivileged.
fn as_nobody(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("gateway"))
        .arg("--data-dir")
        .arg(data)
        .args(args);
    isolate(&mut cmd);
    cmd
}

/// The degraded mode: a gateway that is not root runs sshd as its own user, which is then the only
/// account sshd can log in, so there is no enrollment user. Enrollment keys then share the node
/// user's file, and what keeps them from listening is `permitlisten="127.0.0.1:1"`: literal, so no
/// other address, and a port that an unprivileged sshd cannot bind.
#[test]
fn unprivileged_gateway_enrollment_key_cannot_listen() {
    let dir = tempfile::Builder::new()
        .prefix("burrow-unpriv")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let data = dir.path().join("data");
    let probe = as_nobody(&data, &["--version"]).output().unwrap();
    if !probe.status.success() {
        // E.g. a checkout under /root, which nobody cannot enter.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: nobody cannot run {}: {}",
            bin("gateway").display(),
            said(&probe)
        );
        return;
    }
    let serve = as_nobody(
        &data,
        &["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"],
    );
    let mut gateway = Proc::spawn(serve, dir.path().join("gateway.log"));
    let run = data.join("run.json");
    wait_until(
        Duration::from_secs(30),
        "the unprivileged gateway's run.json",
        || {
            assert!(
                gateway.child.try_wait().unwrap().is_none(),
                "{}",
                gateway.log_text()
            );
            run.exists()
        },
    );
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&run).unwrap()).unwrap();
    let ssh_port: u16 = info["ssh"]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let join = |extra: &[&str]| {
        let out = as_nobody(&data, &[&["join", "create"], extra].concat())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let ticket = JoinTicket::decode(&join(&[])).unwrap();
    assert_eq!(
        (ticket.user.as_str(), ticket.enroll_user.as_deref()),
        ("nobody", None)
    );
    assert!(gateway.log_text().contains("sshd runs unprivileged"));
    let key = dir.path().join("enroll_key");
    enrollment_identity(&ticket.secret).save(&key).unwrap();
    for listen in [
        "127.0.0.1:1",
        "0.0.0.0:40999",
        "[::]:40998",
        "127.0.0.1:40997",
    ] {
        let spec = format!("{listen}:127.0.0.1:1");
        let out = ssh(ssh_port, &key, &ticket.user, &["-R", &spec]);
        assert_eq!(out.status.code(), Some(255), "-R {spec}: {}", said(&out));
        assert!(
            said(&out).contains("remote port forwarding failed"),
            "-R {spec}: {}",
            said(&out)
        );
    }
    // And the key pairs, end to end.
    let out = agent_join(&join(&[]), "unprivileged");
    assert!(out.status.success(), "{}", said(&out));
    gateway.terminate();
}
