use serde_json::json;

use super::*;

/// Feeds canned NDJSON lines; returns stdout, stderr and the exit code (or the finish error).
fn run(lines: &[Value], interrupted: bool) -> (Vec<u8>, String, Result<u8, String>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = {
        let mut p = Printer::new(&mut out, &mut err, false);
        for l in lines {
            p.line(l.to_string().as_bytes()).unwrap();
        }
        p.finish(interrupted).map_err(|e| format!("{e:#}"))
    };
    (out, String::from_utf8(err).unwrap(), code)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn job(nodes: &[&str]) -> Value {
    json!({"event": "job", "job_id": "j1", "nodes": nodes})
}
fn start(node: &str) -> Value {
    json!({"event": "start", "job_id": "j1", "node": node})
}
fn out(node: &str, data: &str) -> Value {
    json!({"event": "stdout", "job_id": "j1", "node": node, "data": data})
}
fn err(node: &str, data: &str) -> Value {
    json!({"event": "stderr", "job_id": "j1", "node": node, "data": data})
}
fn exit(node: &str, state: &str, code: Option<i64>, signal: Option<i64>, timed_out: bool) -> Value {
    json!({"event": "exit", "job_id": "j1", "node": node, "state": state, "exit_code": code,
           "signal": signal, "timed_out": timed_out, "duration_ms": 5})
}
fn ok(node: &str) -> Value {
    exit(node, "succeeded", Some(0), None, false)
}
fn error(node: &str, state: &str, message: &str) -> Value {
    json!({"event": "error", "job_id": "j1", "node": node, "state": state, "error": message,
           "code": state})
}
fn summary(counts: &[(&str, u64)]) -> Value {
    let mut s = serde_json::Map::new();
    for state in STATES {
        s.insert(state.into(), json!(0));
    }
    for (state, n) in counts {
        s.insert((*state).into(), json!(n));
    }
    json!({"event": "summary", "job_id": "j1", "state": "failed", "summary": s})
}

#[test]
fn one_node_passes_bytes_through_and_exits_with_its_code() {
    let (o, e, code) = run(
        &[
            job(&["pi-1"]),
            start("pi-1"),
            out("pi-1", "par"),
            err("pi-1", "warn"),
            out("pi-1", "tial\n"),
            json!({"event": "stdout", "job_id": "j1", "node": "pi-1", "data_b64": "/wA="}),
            exit("pi-1", "failed", Some(7), None, false),
            summary(&[("failed", 1)]),
        ],
        false,
    );
    assert_eq!(o, b"partial\n\xff\x00");
    assert_eq!(
        e, "warn",
        "no prefix, no summary line, no note for a plain exit code"
    );
    assert_eq!(code, Ok(7));
}

#[test]
fn one_node_codes_follow_ssh() {
    let one = |end: Value, interrupted| {
        let (_, e, code) = run(&[job(&["pi-1"]), end, summary(&[])], interrupted);
        (code.unwrap(), e)
    };
    assert_eq!(one(ok("pi-1"), false), (0, String::new()));
    let (code, e) = one(exit("pi-1", "timed_out", None, Some(9), true), false);
    assert_eq!(code, TIMED_OUT);
    assert!(e.contains("timed out"), "{e}");
    let (code, e) = one(exit("pi-1", "failed", None, Some(15), false), false);
    assert_eq!(code, 128 + 15);
    assert!(e.contains("killed by signal 15"), "{e}");
    let (code, e) = one(error("pi-1", "offline", "pi-1 is offline"), false);
    assert_eq!(code, DID_NOT_RUN);
    assert_eq!(e, "gateway: pi-1: offline: pi-1 is offline\n");
    for state in ["refused", "lost", "expired", "unknown"] {
        assert_eq!(
            one(error("pi-1", state, "why"), false).0,
            DID_NOT_RUN,
            "{state}"
        );
    }
    // Cancelled by our own Ctrl-C: 130 whether it had started or not; by someone else: as ssh.
    let killed = exit("pi-1", "cancelled", None, Some(9), false);
    assert_eq!(one(killed.clone(), true).0, INTERRUPTED);
    assert_eq!(one(killed, false).0, 128 + 9);
    assert_eq!(
        one(error("pi-1", "cancelled", "cancelled"), true).0,
        INTERRUPTED
    );
    assert_eq!(
        one(error("pi-1", "cancelled", "cancelled"), false).0,
        DID_NOT_RUN
    );
}

#[test]
fn several_nodes_prefix_whole_lines_and_never_mix_them() {
    let (o, e, code) = run(
        &[
            job(&["a", "b"]),
            start("a"),
            start("b"),
            out("a", "one "),
            out("b", "x\ny"),
            out("a", "line\ntwo\n\nthr"),
            err("b", "oops\n"),
            ok("b"),
            out("a", "ee"),
            ok("a"),
            summary(&[("succeeded", 2)]),
        ],
        false,
    );
    assert_eq!(
        text(o),
        "[b] x\n[a] one line\n[a] two\n[a] \n[b] y\n[a] three\n",
        "partial lines wait for their newline or their node's end; empty lines keep the prefix"
    );
    assert_eq!(e, "[b] oops\n2 succeeded\n");
    assert_eq!(code, Ok(0));
}

#[test]
fn several_nodes_exit_1_unless_all_succeeded_and_say_why() {
    let (o, e, code) = run(
        &[
            job(&["a", "b", "c", "d"]),
            ok("a"),
            exit("b", "failed", Some(3), None, false),
            error("c", "offline", "c is offline"),
            exit("d", "timed_out", None, Some(9), true),
            summary(&[
                ("succeeded", 1),
                ("failed", 1),
                ("offline", 1),
                ("timed_out", 1),
            ]),
        ],
        false,
    );
    assert!(o.is_empty());
    assert_eq!(
        e,
        "[b] failed: exit code 3\n[c] offline: c is offline\n[d] timed out: killed when its \
         time ran out\n1 succeeded, 1 failed, 1 timed out, 1 offline\n"
    );
    assert_eq!(code, Ok(1));
    // A node of the job with no outcome at all is no success either.
    let (_, _, code) = run(
        &[job(&["a", "b"]), ok("a"), summary(&[("succeeded", 1)])],
        false,
    );
    assert_eq!(code, Ok(1));
    // Nothing matched: nothing ran.
    let (_, e, code) = run(&[job(&[]), summary(&[])], false);
    assert_eq!((e.as_str(), code), ("no node ran it\n", Ok(1)));
}

#[test]
fn an_endless_line_is_printed_in_bounded_pieces() {
    let long = "x".repeat(MAX_PARTIAL + 10);
    let (o, _, _) = run(
        &[
            job(&["a", "b"]),
            out("a", &long),
            ok("a"),
            ok("b"),
            summary(&[]),
        ],
        false,
    );
    let o = text(o);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 2, "{}", lines.len());
    assert_eq!(lines[0].len(), 4 + MAX_PARTIAL);
    assert_eq!(lines[1], format!("[a] {}", "x".repeat(10)));
}

#[test]
fn a_stream_cut_before_the_summary_is_an_error_naming_the_job() {
    let (o, _, code) = run(&[job(&["a", "b"]), out("a", "half")], false);
    assert_eq!(text(o), "[a] half\n", "what came is printed");
    let e = code.unwrap_err();
    assert!(e.contains("gateway jobs attach j1"), "{e}");
}

#[test]
fn quiet_prints_nothing_but_keeps_the_outcome() {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = {
        let mut p = Printer::new(&mut o, &mut e, true);
        assert_eq!(p.event(&job(&["pi-1"])).unwrap(), Step::Job("j1".into()));
        assert_eq!(p.event(&out("pi-1", "hi\n")).unwrap(), Step::More);
        p.event(&exit("pi-1", "failed", Some(2), None, false))
            .unwrap();
        assert_eq!(p.event(&summary(&[("failed", 1)])).unwrap(), Step::Done);
        p.finish(false).unwrap()
    };
    assert!(o.is_empty() && e.is_empty());
    assert_eq!(code, 2);
}

#[test]
fn attach_knows_the_nodes_before_the_stream() {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let mut p = Printer::new(&mut o, &mut e, false);
    p.expect("j9", vec!["pi-1".into()]);
    assert_eq!(p.job_id(), Some("j9"));
    // No `job` event (a replay may start right at the output): still one node, unprefixed.
    assert_eq!(p.event(&out("pi-1", "hi\n")).unwrap(), Step::More);
    p.event(&ok("pi-1")).unwrap();
    p.event(&summary(&[("succeeded", 1)])).unwrap();
    assert_eq!(p.finish(false).unwrap(), 0);
    drop(p);
    assert_eq!(o, b"hi\n");
    assert!(e.is_empty());
}

#[test]
fn bad_lines_are_errors_blank_lines_are_not() {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let mut p = Printer::new(&mut o, &mut e, false);
    assert_eq!(p.line(b"  \r").unwrap(), Step::More);
    let err = p.line(b"<html>").unwrap_err();
    assert!(format!("{err:#}").contains("not JSON"), "{err:#}");
}

#[test]
fn summary_line_names_the_nonzero_states_in_order() {
    let s = summary(&[("offline", 1), ("succeeded", 5), ("failed", 1)]);
    assert_eq!(
        summary_line(&s["summary"]),
        "5 succeeded, 1 failed, 1 offline"
    );
}

/// Seen against the gateway of session 2026-12-02: a live stream that skipped one node's `exit`
/// (its summary counted it). The node's stored result settles it, and the exit code is right.
#[test]
fn a_node_the_stream_skipped_is_settled_from_its_stored_result() {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = {
        let mut p = Printer::new(&mut o, &mut e, false);
        for ev in [
            job(&["a", "b", "c"]),
            ok("b"),
            summary(&[("succeeded", 2), ("failed", 1)]),
        ] {
            p.event(&ev).unwrap();
        }
        assert_eq!(p.missing(), ["a", "c"]);
        p.settle(
            "a",
            &json!({"node": "a", "state": "succeeded", "exit_code": 0}),
        )
        .unwrap();
        p.settle(
            "c",
            &json!({"node": "c", "state": "failed", "exit_code": 4}),
        )
        .unwrap();
        assert!(p.missing().is_empty());
        p.finish(false).unwrap()
    };
    assert_eq!(code, 1);
    assert_eq!(
        String::from_utf8(e).unwrap(),
        "[c] failed: exit code 4\n2 succeeded, 1 failed\n",
        "late notes come before the summary line"
    );
    // Before the summary nothing is missing yet: the stream may still say it.
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let mut p = Printer::new(&mut o, &mut e, false);
    p.event(&job(&["a"])).unwrap();
    assert!(p.missing().is_empty());
}
