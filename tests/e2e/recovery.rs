//! Coming back by itself: a killed SSH session, a restarted gateway, a restarted agent.

use serde_json::json;

use std::time::Duration;

use crate::util::{alive, children, wait_until, Agent, Gateway};

#[test]
fn node_comes_back_after_its_session_is_killed_and_after_a_gateway_restart() {
    let gw = Gateway::start();
    let mut agent = Agent::start(&gw.join(&[]), "phoenix");
    gw.wait_status("phoenix", "online");

    // Kill the sshd process serving the agent's session (a child of the supervised sshd).
    let (_, status) = gw.api("GET", "/api/v1/status", None);
    let sshd = status["sshd"]["pid"].as_u64().unwrap() as u32;
    let sessions = children(sshd);
    assert!(!sessions.is_empty(), "no sshd session process found");
    for pid in sessions {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    gw.wait_status("phoenix", "offline");
    gw.wait_status("phoenix", "online");
    let (code, out) = gw.exec("phoenix", json!({"command": "echo back"}));
    assert_eq!(
        (code, out["stdout"].as_str()),
        (200, Some("back\n")),
        "{out}"
    );

    // Restart the gateway on the same data dir and ports.
    let gw = gw.restart();
    gw.wait_status("phoenix", "online");
    let (code, out) = gw.exec("phoenix", json!({"command": "echo again"}));
    assert_eq!(
        (code, out["stdout"].as_str()),
        (200, Some("again\n")),
        "{out}"
    );

    // Restart the agent without a join string: identity and token persist.
    agent.restart();
    wait_until(
        Duration::from_secs(30),
        "exec through the restarted agent",
        || gw.exec("phoenix", json!({"command": "echo restarted"})).1["stdout"] == "restarted\n",
    );
}

/// Regression: the reconnect backoff kept doubling through a gateway outage (reset only by a session
/// that lived 60 s), so nodes came back 36–40 s after a 150 s outage ended. Now an unreachable gateway
/// is probed every 1–2 s and the node is back within seconds of it.
#[test]
fn agent_returns_within_seconds_after_gateway_outage() {
    let gw = Gateway::start();
    let agent = Agent::start(&gw.join(&[]), "returns");
    gw.wait_status("returns", "online");
    // Long enough for the old backoff to have doubled to 16-32 s waits (1+2+4+8+16 s of attempts).
    let outage = Duration::from_secs(25);
    let gw = gw.restart_after(|_| {
        let down = std::time::Instant::now();
        wait_until(
            outage + Duration::from_secs(5),
            "the outage to last",
            || down.elapsed() >= outage,
        );
    });
    let up = std::time::Instant::now();
    wait_until(
        Duration::from_secs(5),
        "node online within 5 s of the gateway",
        || gw.node("returns")["status"] == "online",
    );
    eprintln!("node back {:?} after the gateway", up.elapsed());
    assert!(agent.proc.log_text().contains("unreachable; probing"));
}

/// Starts `sh -c 'echo $$ > PIDFILE; sleep 300'` on `node` in the background; returns the shell's
/// and the sleep's pids once both run, and the thread waiting for the exec's answer.
fn start_long_command(
    gw: &std::sync::Arc<Gateway>,
    node: &str,
    dir: &std::path::Path,
) -> (u32, u32, std::thread::JoinHandle<(u16, serde_json::Value)>) {
    start_sleep(gw, node, &dir.join("command.pid"), 300, "default")
}

/// `sh -c 'echo $$ > PIDFILE; sleep SECS; echo done'` on `node`, as [`start_long_command`].
fn start_sleep(
    gw: &std::sync::Arc<Gateway>,
    node: &str,
    pidfile: &std::path::Path,
    secs: u32,
    lane: &str,
) -> (u32, u32, std::thread::JoinHandle<(u16, serde_json::Value)>) {
    let pidfile = pidfile.to_path_buf();
    let command = format!("echo $$ > {}; sleep {secs}; echo done", pidfile.display());
    let (gw2, node2) = (gw.clone(), node.to_string());
    let body = json!({"command": command, "timeout_s": 600, "lane": lane});
    let answer = std::thread::spawn(move || gw2.exec(&node2, body));
    let mut pids = None;
    wait_until(Duration::from_secs(20), "the command to run", || {
        let Some(sh) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            return false;
        };
        pids = children(sh).first().map(|&sleep| (sh, sleep));
        pids.is_some()
    });
    let (sh, sleep) = pids.unwrap();
    (sh, sleep, answer)
}

/// Regression: the agent died on SIGTERM and left its commands running, in their own process
/// groups, with no one to report or stop them.
#[test]
fn commands_killed_on_agent_stop() {
    let gw = std::sync::Arc::new(Gateway::start());
    let mut agent = Agent::start(&gw.join(&[]), "stopper");
    gw.wait_status("stopper", "online");
    let (sh, sleep, answer) = start_long_command(&gw, "stopper", agent.dir.path());
    let _ = std::process::Command::new("kill")
        .arg(agent.proc.child.id().to_string())
        .status();
    wait_until(Duration::from_secs(5), "the agent to exit", || {
        matches!(agent.proc.child.try_wait(), Ok(Some(_)))
    });
    wait_until(Duration::from_secs(2), "its command to be gone", || {
        !alive(sh) && !alive(sleep)
    });
    assert!(agent.proc.log_text().contains("stopping 1 running command"));
    // The job waits for its node; the agent's next start tells how the command ended (killed by
    // SIGTERM, kept since the link was gone) or that it cannot say (interrupted: node_lost).
    agent.restart();
    let (status, out) = answer.join().unwrap();
    eprintln!("exec answered {status}: {out}");
    assert_ne!(out["stdout"], "done\n", "{out}");
    assert!(
        (status == 200 && out["signal"] == 15) || out["code"] == "node_lost",
        "{out}"
    );
}

/// Regression: after a crash (SIGKILL) of the agent, its commands ran on forever; the next start
/// now kills what the crashed run recorded in its data dir.
#[test]
fn commands_left_by_a_crashed_agent_are_killed_at_next_start() {
    let gw = std::sync::Arc::new(Gateway::start());
    let mut agent = Agent::start(&gw.join(&[]), "crasher");
    gw.wait_status("crasher", "online");
    let (sh, sleep, answer) = start_long_command(&gw, "crasher", agent.dir.path());
    agent.proc.child.kill().unwrap();
    agent.proc.child.wait().unwrap();
    assert!(
        alive(sh) && alive(sleep),
        "a SIGKILLed agent cannot kill anything itself"
    );
    agent.restart();
    wait_until(
        Duration::from_secs(10),
        "the leftover command to be killed",
        || !alive(sh) && !alive(sleep),
    );
    // Back, the node says the job was interrupted: it never runs it again.
    let (status, out) = answer.join().unwrap();
    assert_eq!(
        (status, out["code"].as_str()),
        (503, Some("node_lost")),
        "{out}"
    );
    assert!(agent
        .proc
        .log_text()
        .contains("left running by a previous run"));
    gw.wait_status("crasher", "online");
}

/// Regression: on SIGTERM the gateway waited for the longest running command (up to days) until
/// systemd SIGKILLed it. Now a command that ends within `--shutdown-grace` is answered; the rest go on
/// running on their nodes (jobs own themselves), the gateway exits when the grace is over, and its next
/// start collects them: here the long one is found running and cancelled.
#[test]
fn gateway_stops_within_its_grace() {
    let gw = std::sync::Arc::new(Gateway::start_with(&["--shutdown-grace", "3s"]));
    let agent = Agent::start(&gw.join(&[]), "graceful");
    gw.wait_status("graceful", "online");
    let dir = agent.dir.path();
    let (_, short_sleep, short) = start_sleep(&gw, "graceful", &dir.join("short.pid"), 2, "a");
    let (long_sh, long_sleep, long) = start_sleep(&gw, "graceful", &dir.join("long.pid"), 300, "b");
    let pid = gw.proc.child.id();
    let stopped = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    // During the grace new requests get a clear refusal, not a hang or a reset.
    let mut refused = None;
    wait_until(Duration::from_secs(2), "a refusal while draining", || {
        let (status, body) = gw.api("GET", "/api/v1/status", None);
        refused = Some(body.clone());
        status == 503
    });
    let refused = refused.unwrap_or_default();
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("shutting down"),
        "{refused}"
    );
    wait_until(
        Duration::from_secs(7),
        "the gateway to exit after its grace",
        || !alive(pid),
    );
    let took = stopped.elapsed();
    eprintln!("gateway exited {took:?} after SIGTERM");
    assert!(!alive(short_sleep));
    let (status, out) = short.join().unwrap();
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("done\n")),
        "{out}"
    );
    let (status, out) = long.join().unwrap();
    assert_eq!(
        (status, out["code"].as_str()),
        (503, Some("unavailable")),
        "the long command is not reported as finished: {out}"
    );
    assert!(
        took >= Duration::from_millis(2900),
        "it gave running commands their grace"
    );
    assert!(
        gw.log_text().contains("grace of 3s is over"),
        "{}",
        gw.log_text()
    );
    assert!(
        alive(long_sh) && alive(long_sleep),
        "the node goes on with its command while the gateway is away"
    );
    let gw = std::sync::Arc::try_unwrap(gw)
        .ok()
        .expect("no other user")
        .restart();
    gw.wait_status("graceful", "online");
    let (status, jobs) = gw.api("GET", "/api/v1/jobs?state=running", None);
    assert_eq!(status, 200, "{jobs}");
    let job = jobs["jobs"][0]["job_id"]
        .as_str()
        .expect("the long job, still running")
        .to_string();
    let (status, out) = gw.api("POST", &format!("/api/v1/jobs/{job}/cancel"), None);
    assert_eq!(status, 200, "{out}");
    wait_until(
        Duration::from_secs(10),
        "the cancelled command to be killed on the node",
        || !alive(long_sh) && !alive(long_sleep),
    );
    wait_until(Duration::from_secs(10), "the job to end cancelled", || {
        gw.api("GET", &format!("/api/v1/jobs/{job}"), None).1["state"] == "cancelled"
    });
}
