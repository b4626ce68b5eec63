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
        let other = s.spawn(|| gw.exec("big", json!({"command": "sleep 1; echo still here"})));
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
    let (status, out) = gw.exec("zeros", json!({ "command": command }));
    assert_eq!(status, 200, "{out}");
    check(&out);
    let before = rss_kib(pid);
    for _round in 0..10 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..5)
                .map(|_| s.spawn(|| gw.exec("zeros", json!({ "command": command }))))
                .collect();
            for h in handles {
                let (status, out) = h.join().unwrap();
                assert_eq!(status, 200, "{out}");
                check(&out);
            }
        });
    }
    let after = rss_kib(pid);
    eprintln!("gateway RSS: {before} KiB before, {after} KiB after 50 capped answers");
    // Five answers in flight hold 5 × (1 MiB kept + ~1.4 MiB encoded); allow for allocator slack.
    assert!(
        after < before + 48 * 1024,
        "gateway RSS grew from {before} KiB to {after} KiB over 50 capped answers"
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
