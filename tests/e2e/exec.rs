//! Exec through curl → gateway → sshd reverse tunnel → agent: output, streaming, bytes, timeouts.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::util::{alive, online_node};

#[test]
fn ndjson_streams_output_as_it_is_produced() {
    let (gw, _agent) = online_node("stream");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let started = Instant::now();
    let resp = agent
        .post(&gw.url("/api/v1/nodes/stream/exec"))
        .header("Authorization", &format!("Bearer {}", gw.token("operator")))
        .header("Accept", "application/x-ndjson")
        .send(json!({"command": "echo a; sleep 2; echo b"}).to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let first_at = started.elapsed();
    assert_eq!(
        (
            first["event"].as_str(),
            first["data"].as_str(),
            first["node"].as_str()
        ),
        (Some("stdout"), Some("a\n"), Some("stream")),
        "{first}"
    );
    assert_eq!(first["job_id"].as_str().map(str::len), Some(32), "{first}");
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let ended_at = started.elapsed();
    assert!(ended_at >= Duration::from_secs(2));
    assert!(
        first_at + Duration::from_millis(1500) < ended_at,
        "first line at {first_at:?}, end at {ended_at:?}: not streamed"
    );
    assert_eq!(
        (rest[0]["event"].as_str(), rest[0]["data"].as_str()),
        (Some("stdout"), Some("b\n"))
    );
    let exit = rest.last().unwrap();
    assert_eq!(exit["event"], "exit");
    assert_eq!(exit["exit_code"], 0);
}

#[test]
fn non_utf8_output_round_trips_exactly() {
    let (gw, _agent) = online_node("bytes");
    let (status, out) = gw.exec(
        "bytes",
        json!({"command": r"printf '\377\376\000x'; printf '\200' >&2"}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        STANDARD
            .decode(out["stdout_b64"].as_str().unwrap())
            .unwrap(),
        b"\xff\xfe\x00x"
    );
    assert_eq!(
        STANDARD
            .decode(out["stderr_b64"].as_str().unwrap())
            .unwrap(),
        b"\x80"
    );
    // argv form, env and cwd.
    let (status, out) = gw.exec(
        "bytes",
        json!({"argv": ["sh", "-c", "echo $GREETING; pwd"], "env": {"GREETING": "hej"}, "cwd": "/tmp"}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "hej\n/tmp\n");
    assert!(out.get("stdout_b64").is_none());
}

#[test]
fn timeout_kills_the_command_and_its_children() {
    let (gw, _agent) = online_node("slow");
    let started = Instant::now();
    let (status, out) = gw.exec(
        "slow",
        json!({"command": "sleep 100 & echo $!; sleep 100", "timeout_s": 1}),
    );
    assert_eq!(status, 200, "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["signal"], 9);
    assert_eq!(out["exit_code"], json!(null));
    let bg: u32 = out["stdout"].as_str().unwrap().trim().parse().unwrap();
    crate::util::wait_until(Duration::from_secs(5), "background sleep to die", || {
        !alive(bg)
    });
}

#[test]
fn concurrent_commands_on_one_node_do_not_block_each_other() {
    let (gw, _agent) = online_node("busy");
    let gw = std::sync::Arc::new(gw);
    let slow = {
        let gw = gw.clone();
        std::thread::spawn(move || {
            gw.exec(
                "busy",
                // Another lane: commands of one lane run one after the other.
                json!({"command": "head -c 3000000 /dev/zero | tr '\\0' x; sleep 3; echo done",
                       "lane": "slow"}),
            )
        })
    };
    let started = Instant::now();
    let (status, out) = gw.exec("busy", json!({"command": "echo quick"}));
    assert_eq!((status, out["stdout"].as_str()), (200, Some("quick\n")));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "quick command waited for the slow one"
    );
    let (status, out) = slow.join().unwrap();
    assert_eq!(status, 200);
    // A whole answer keeps the first MiB per stream (`serve --max-answer-bytes`) and counts the rest.
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(out["truncated"], true);
    assert_eq!(out["dropped_bytes"]["stdout"], 3_000_000 + 5 - (1 << 20));
}

#[test]
fn bad_requests_get_json_errors() {
    let (gw, _agent) = online_node("errs");
    for (body, want) in [
        (json!({}), 400),
        (json!({"command": "x", "argv": ["y"]}), 400),
        (json!({"command": "true", "timeout_s": 0}), 400),
        (json!({"comand": "typo"}), 400),
        (json!({"argv": ["/nonexistent/program"]}), 400),
    ] {
        let (status, out) = gw.exec("errs", body.clone());
        assert_eq!(status, want, "{body} → {out}");
        assert!(
            out["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{out}"
        );
    }
    let (status, out) = gw.exec("nope", json!({"command": "true"}));
    assert_eq!(status, 404, "{out}");
    let (status, _) = gw.api("GET", "/api/v1/nodes/nope", None);
    assert_eq!(status, 404);
    let (status, _) = gw.api("GET", "/api/v1/nope", None);
    assert_eq!(status, 404);
}

#[test]
fn offline_node_is_a_clear_503_not_a_hang() {
    let (gw, mut agent) = online_node("gone");
    agent.proc.terminate();
    gw.wait_status("gone", "offline");
    let started = Instant::now();
    let (status, out) = gw.exec("gone", json!({"command": "true"}));
    assert_eq!(status, 503, "{out}");
    assert!(out["error"].as_str().unwrap().contains("offline"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
