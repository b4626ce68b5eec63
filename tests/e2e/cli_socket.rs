//! The CLI reaches the gateway only over its Unix socket in the 0700 data dir (issue 6 §3): a
//! process squatting the API's TCP port gets nothing from it, and the audit log names the Unix user
//! who ran each CLI action.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::util::{wait_until, Agent, Gateway};

#[test]
fn cli_against_a_squatter_sends_no_token() {
    let mut gw = Gateway::start();
    let api = gw.api;
    // The gateway crashes: run.json and its socket stay behind, the API port comes free.
    gw.proc.child.kill().unwrap();
    gw.proc.child.wait().unwrap();
    assert!(gw.data().join("run.json").exists());
    let squatter = TcpListener::bind(api).expect("squatting the API port");
    // It records what each connection sends within 2 s, then hangs up (so a CLI that did talk to
    // it fails instead of waiting forever); a connection saying STOP ends it.
    let squatting = std::thread::spawn(move || {
        let mut heard = Vec::new();
        for c in squatter.incoming() {
            let mut c = c.unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            if got == b"STOP" {
                break;
            }
            heard.extend_from_slice(b"<connection>");
            heard.extend_from_slice(&got);
        }
        heard
    });

    for args in [
        &["nodes", "ls"][..],
        &["join", "create"],
        &["nodes", "approve", "pi"],
        &["exec", "pi", "--", "true"],
    ] {
        let out = gw.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded against a dead gateway"
        );
        assert!(
            stderr.contains("does not seem to be running"),
            "{args:?}: unclear message: {stderr}"
        );
    }

    let mut stop = TcpStream::connect(api).unwrap();
    stop.write_all(b"STOP").unwrap();
    stop.shutdown(std::net::Shutdown::Write).unwrap();
    let heard = squatting.join().unwrap();
    let heard = String::from_utf8_lossy(&heard);
    assert!(
        !heard.contains("Authorization") && !heard.contains("eyJ"),
        "the squatter received a token: {heard}"
    );
    assert!(heard.is_empty(), "the CLI talked to the squatter: {heard}");

    // The gateway comes back over its stale socket, and the CLI reaches it again.
    let gw = gw.restart();
    let out = gw.cli(&["nodes", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `uid:N(name)` of this test process, as the gateway should record it.
fn expected_actor() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let name = passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some(&uid.to_string()))
        .and_then(|l| l.split(':').next())
        .unwrap();
    format!("uid:{uid}({name})")
}

#[test]
fn cli_actions_are_audited_as_the_unix_user() {
    let gw = Gateway::start();
    let _agent = Agent::start(&gw.join(&["--manual"]), "pi-audit");
    gw.wait_status("pi-audit", "pending");
    let out = gw.cli(&["nodes", "approve", "pi-audit"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let actor = expected_actor();
    let audit = gw.data().join("audit.log");
    let by = |action: &str| -> Option<String> {
        let text = std::fs::read_to_string(&audit).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap_or("").to_string())
    };
    wait_until(Duration::from_secs(10), "the approval in audit.log", || {
        by("node.approve").is_some()
    });
    assert_eq!(by("node.approve").unwrap(), actor);
    // Minting a token and a join string names the person too (they used to say "gateway" or
    // nothing at all).
    gw.token("viewer");
    gw.join(&[]);
    wait_until(
        Duration::from_secs(10),
        "token and join in audit.log",
        || by("token.create").is_some() && by("join.create").is_some(),
    );
    assert_eq!(by("token.create").unwrap(), actor);
    assert_eq!(by("join.create").unwrap(), actor);
}

#[test]
fn cli_reaches_the_gateway_while_its_tcp_port_is_flooded() {
    let gw = Gateway::start();
    // Idle connections up to the TCP API's cap (256): further TCP clients get a 503 ...
    let mut held = Vec::new();
    wait_until(
        Duration::from_secs(20),
        "the TCP API refusing with 503",
        || {
            for _ in 0..32 {
                held.push(TcpStream::connect(gw.api).unwrap());
            }
            let mut probe = TcpStream::connect(gw.api).unwrap();
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            probe
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut answer = Vec::new();
            let _ = probe.read_to_end(&mut answer);
            answer.starts_with(b"HTTP/1.1 503")
        },
    );
    // ... while the CLI, on its own socket, is served.
    let out = gw.cli(&["nodes", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
}

#[test]
fn cli_refuses_a_data_dir_others_could_plant_a_socket_in() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start();
    let set =
        |mode| std::fs::set_permissions(gw.data(), std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o777);
    let out = gw.cli(&["nodes", "ls"]);
    set(0o700);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("refusing to use"),
        "{stderr}"
    );
    let out = gw.cli(&["nodes", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
