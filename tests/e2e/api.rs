//! The API contract at the edges: 404/405/413 from the route table, requests too large for the wire
//! refused before they reach a node, and whole answers whose size (and the gateway's memory) is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::util::{Agent, Gateway};

/// Sends `head` (and `body`) on a fresh connection; returns the status, the head and the JSON body.
fn raw(gw: &Gateway, head: &str, body: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(gw.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The gateway may answer (413) and close before reading all of a large body.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, head.to_string(), body)
}

fn online(name: &str) -> (Gateway, Agent) {
    let gw = Gateway::start();
    let agent = Agent::start(&gw.join(&[]), name);
    gw.wait_status(name, "online");
    (gw, agent)
}

#[test]
fn wrong_method_on_a_route_is_405_with_allow() {
    let gw = Gateway::start();
    let token = gw.token("gateway");
    let (status, head, body) = raw(
        &gw,
        &format!(
            "DELETE /api/v1/nodes/x/exec HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(status, 405, "{head}\n{body}");
    assert_eq!(body["code"], "method_not_allowed");
    assert!(
        head.to_ascii_lowercase().contains("\r\nallow: post"),
        "{head}"
    );
    // 405 comes from the table before any token is checked; unknown paths stay 404.
    let (status, _, body) = raw(
        &gw,
        "GET /api/v1/agent/pair HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, _, body) = raw(
        &gw,
        "GET /api/v1/nope HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn body_over_the_route_limit_is_413_declared_or_counted() {
    let gw = Gateway::start();
    let token = gw.token("gateway");
    // Declared: refused from Content-Length, before the body is read.
    let (status, _, body) = raw(
        &gw,
        &format!(
            "POST /api/v1/join-tokens HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 200000\r\nConnection: close\r\n\r\n"
        ),
        &[b' '; 200_000],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    // Counted: a chunked body has no length up front.
    let chunk = vec![b' '; 100_000];
    let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _, body) = raw(
        &gw,
        &format!(
            "POST /api/v1/join-tokens HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ),
        &chunked,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    // The API still answers.
    assert_eq!(gw.api("GET", "/api/v1/status", None).0, 200);
}

/// A 1 MiB `command` used to become a frame above the protocol limit: the agent took it for a protocol
/// error and dropped the link with every other command on the node.
#[test]
fn oversized_command_is_413_and_the_link_survives() {
    let (gw, _agent) = online("big");
    let running = std::thread::scope(|s| {
        let other = s.spawn(|| {
            gw.exec(
                "big",
                json!({"command": "sleep 1; echo still here", "lane": "other"}),
            )
        });
        let (status, out) = gw.exec("big", json!({"command": "x".repeat(1 << 20)}));
        assert_eq!(
            (status, out["code"].as_str()),
            (413, Some("too_large")),
            "{out}"
        );
        other.join().unwrap()
    });
    assert_eq!(running.0, 200, "{}", running.1);
    assert_eq!(running.1["stdout"], "still here\n");
    let (status, out) = gw.exec("big", json!({"command": "echo after"}));
    assert_eq!((status, out["stdout"].as_str()), (200, Some("after\n")));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A whole answer used to keep 16 MiB per stream, JSON-escaped (a NUL became 6 bytes): one request
/// peaked at 130 MiB and the gateway kept ~570 MiB after a few dozen.
#[test]
fn whole_answers_are_capped_and_gateway_memory_stays_bounded() {
    let (gw, _agent) = online("zeros");
    let pid = gw.proc.child.id();
    let produced = 3 << 20;
    let command = format!("head -c {produced} /dev/zero; echo text >&2");
    let check = |out: &Value| {
        assert_eq!(out["truncated"], true, "{out}");
        assert_eq!(out["dropped_bytes"]["stdout"], produced - (1 << 20));
        assert_eq!(out["dropped_bytes"]["stderr"], 0);
        assert_eq!(out["stderr"], "text\n");
        assert!(
            out.get("stdout").is_none(),
            "binary output goes as base64 only"
        );
        let kept = STANDARD
            .decode(out["stdout_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(kept, vec![0u8; 1 << 20]);
    };
    let round = || {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..5)
                .map(|i| {
                    let body = json!({ "command": command, "lane": format!("lane-{i}") });
                    let gw = &gw;
                    s.spawn(move || gw.exec("zeros", body))
                })
                .collect();
            for h in handles {
                let (status, out) = h.join().unwrap();
                assert_eq!(status, 200, "{out}");
                check(&out);
            }
        });
    };
    // glibc keeps freed memory in its per-thread arenas, so RSS climbs for a few rounds and then
    // levels off (measured: ~70 MiB from round 8 on, debug build); before the cap, 50 such answers
    // left the gateway at ~570 MiB.
    let mut samples = Vec::new();
    for _ in 0..10 {
        round();
        samples.push(rss_kib(pid));
    }
    eprintln!("gateway RSS after each round of 5 capped answers (KiB): {samples:?}");
    let peak = samples.iter().max().copied().unwrap_or(0);
    assert!(
        peak < 128 * 1024,
        "gateway RSS reached {peak} KiB over 50 capped answers: {samples:?}"
    );
}

#[test]
fn text_output_has_no_truncation_and_no_base64() {
    let (gw, _agent) = online("text");
    let (status, out) = gw.exec("text", json!({"command": "printf 'caf\\303\\251\\n'"}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "café\n");
    assert_eq!(out["truncated"], false);
    assert!(out.get("stdout_b64").is_none());
}

/// Starts a streamed exec on a raw connection and returns it unread: it holds one API worker until
/// the command ends.
/// An exec in lane `lane` (commands of one lane run one after the other) held open by its client.
fn held_exec(gw: &Gateway, token: &str, node: &str, command: &str, lane: &str) -> TcpStream {
    let body = json!({ "command": command, "timeout_s": 120, "lane": lane }).to_string();
    let mut s = TcpStream::connect(gw.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /api/v1/nodes/{node}/exec HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Accept: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Regression: 34 concurrent `sleep` execs held all 32 API workers, the agents' heartbeats (then
/// HTTP requests) timed out, and after three misses the agent dropped its session, killing every
/// command on the node. Heartbeats now ride each node's secure link: with 40 execs holding the API,
/// another node that reconnects comes online and reports fresh metrics, the busy node stays online,
/// and all 40 commands finish.
#[test]
fn forty_held_execs_do_not_starve_heartbeats() {
    let gw = Gateway::start();
    let busy = Agent::start(&gw.join(&[]), "busy");
    let mut other = Agent::start(&gw.join(&[]), "other");
    gw.wait_status("busy", "online");
    gw.wait_status("other", "online");
    let token = gw.token("operator");
    // The CLI has its own socket and workers: it sees the fleet while the TCP API is saturated.
    let node = |id: &str| -> Value {
        let out = gw.cli(&["nodes", "ls", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let marker = tempfile::tempdir().unwrap();
    let done = marker.path().join("done");
    let command = format!("sleep 20; echo x >> {}", done.display());
    let mut held: Vec<TcpStream> = (0..40)
        .map(|i| held_exec(&gw, &token, "busy", &command, &format!("lane-{i}")))
        .collect();
    // The API is full (32 workers): a plain request now waits.
    let t0 = unix_now();
    other.restart();
    crate::util::wait_until(
        Duration::from_secs(10),
        "the other node to come back",
        || {
            let n = node("other");
            n["status"] == "online"
                && n["last_seen"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .is_some_and(|t| {
                        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() >= t0
                    })
                && n["metrics"].is_object()
        },
    );
    assert_eq!(node("busy")["status"], "online");
    assert!(
        !done.exists(),
        "the commands ended before the check: it proved nothing"
    );
    for s in &mut held {
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("\"exit_code\":0"), "{answer}");
    }
    let lines = std::fs::read_to_string(&done).unwrap();
    assert_eq!(lines.lines().count(), 40);
    drop(busy);
}
