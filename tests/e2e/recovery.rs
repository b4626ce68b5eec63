//! Coming back by itself: a killed SSH session, a restarted gateway, a restarted agent.

use serde_json::json;

use std::time::Duration;

use crate::util::{children, wait_until, Agent, Gateway};

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
