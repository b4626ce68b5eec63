//! Rejecting or revoking an online node ends its access at once: the link, its running commands, its
//! sshd sessions (also a hostile client's holding the node's second port), its key.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{alive, wait_until, Agent, Gateway};

/// `ssh -N -R` with the node's own key on its second port: what a thief of the key would hold.
fn hostile_session(gw: &Gateway, agent: &Agent, port: u64) -> Child {
    let key = agent.dir.path().join("data/agent.key");
    let child = crate::util::ssh_client(gw.ssh.port(), &key)
        .args(["-o", "ExitOnForwardFailure=yes", "-N", "-R"])
        .arg(format!("127.0.0.1:{port}:127.0.0.1:9"))
        .arg("root@127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "hostile forward listening", || {
        TcpStream::connect(("127.0.0.1", port as u16)).is_ok()
    });
    child
}

/// Starts `command` streamed; returns the first stdout line (the shell's pid) and the rest of the
/// stream's lines, read in a thread.
fn streaming(
    gw: &Gateway,
    node: &str,
    command: &str,
) -> (u32, std::thread::JoinHandle<Vec<Value>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let resp = agent
        .post(&gw.url(&format!("/api/v1/nodes/{node}/exec")))
        .header("Authorization", &format!("Bearer {}", gw.token("operator")))
        .header("Accept", "application/x-ndjson")
        .send(json!({ "command": command, "timeout_s": 60 }).to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pid = first["data"].as_str().unwrap().trim().parse().unwrap();
    let rest = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    });
    (pid, rest)
}

/// Waits for `child` to exit, up to `limit`.
fn ends_within(child: &mut Child, limit: Duration, what: &str) {
    wait_until(limit, what, || child.try_wait().unwrap().is_some());
}

#[test]
fn rejecting_an_online_node_ends_its_access_at_once_and_approving_brings_it_back() {
    let gw = Gateway::start();
    let agent = Agent::start(&gw.join(&[]), "doomed");
    gw.wait_status("doomed", "online");
    let ports = gw.node("doomed")["ports"].clone();
    let mut thief = hostile_session(&gw, &agent, ports[1].as_u64().unwrap());
    let (pid, rest) = streaming(&gw, "doomed", "echo $$; sleep 50; echo finished");

    let out = gw.cli(&["nodes", "reject", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cut = Instant::now();
    // Exec is refused at once, the running command is cancelled and its stream ends with the reason.
    let (status, body) = gw.exec("doomed", json!({"command": "true"}));
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("node_rejected")),
        "{body}"
    );
    let events = rest.join().unwrap();
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["event"], "error", "{events:?}");
    assert_eq!(last["code"], "node_lost", "{last}");
    wait_until(
        Duration::from_secs(2),
        "the running command to be killed",
        || !alive(pid),
    );
    // The thief's session and its listener are gone too.
    ends_within(
        &mut thief,
        Duration::from_secs(2).saturating_sub(cut.elapsed()),
        "the hostile client's sshd session to end",
    );
    assert!(TcpStream::connect(("127.0.0.1", ports[1].as_u64().unwrap() as u16)).is_err());
    assert!(!events.iter().any(|e| e["data"] == "finished\n"));

    // Approving it again brings the same agent back on the same ports, no new join needed.
    let out = gw.cli(&["nodes", "approve", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.node("doomed")["ports"], ports);
    gw.wait_status("doomed", "online");
    let (status, body) = gw.exec("doomed", json!({"command": "echo back"}));
    assert_eq!(
        (status, body["stdout"].as_str()),
        (200, Some("back\n")),
        "{body}"
    );
}

#[test]
fn revoking_an_online_node_stops_its_agent_and_frees_its_name() {
    let gw = Gateway::start();
    let mut agent = Agent::start(&gw.join(&[]), "gone");
    gw.wait_status("gone", "online");
    let (pid, rest) = streaming(&gw, "gone", "echo $$; sleep 50");

    let out = gw.cli(&["nodes", "revoke", "gone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = gw.exec("gone", json!({"command": "true"}));
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(rest.join().unwrap().last().unwrap()["code"], "node_lost");
    wait_until(
        Duration::from_secs(2),
        "the running command to be killed",
        || !alive(pid),
    );
    // The agent was told why, said so once, and stopped instead of retrying forever, with the exit
    // code its systemd unit does not restart.
    ends_within(
        &mut agent.proc.child,
        Duration::from_secs(10),
        "the agent to stop after its node was revoked",
    );
    assert_eq!(
        agent.proc.child.try_wait().unwrap().unwrap().code(),
        Some(3)
    );
    let log = agent.proc.log_text();
    let told = log.lines().filter(|l| l.contains("revoked")).count();
    assert_eq!(told, 1, "{log}");
    // A restart does not start retrying: it says to join again.
    let again = crate::util::isolate(&mut Command::new(crate::util::bin("agent")))
        .arg("--data-dir")
        .arg(agent.dir.path().join("data"))
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&again.stderr).contains("join again"));
    let (status, _) = gw.api("GET", "/api/v1/nodes/gone", None);
    assert_eq!(status, 404);
    // The name is free: a new machine joins under it.
    let newcomer = Agent::start(&gw.join(&[]), "gone");
    gw.wait_status("gone", "online");
    drop(newcomer);
    // Revoking it over the API works the same, and twice is a 404.
    let (status, _) = gw.api("DELETE", "/api/v1/nodes/gone", None);
    assert_eq!(status, 200);
    let (status, body) = gw.api("DELETE", "/api/v1/nodes/gone", None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}
