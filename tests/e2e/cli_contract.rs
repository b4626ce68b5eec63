//! The `gateway` CLI of the command bus (exec, jobs, cp) against a fake gateway: a Unix socket in
//! a 0700 data dir answering the jobs API exactly as its contract says (brief "cli", issue 7), so
//! the real CLI binary's requests, output, exit codes, stdin streaming, Ctrl-C and file streaming
//! are checked before the real server exists. `cli_bus.rs` runs the same CLI against the real
//! gateway and agents. The fake itself is `fake_gateway.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::fake_gateway::{noise, peak_kib, summary, Fake, Sha};
use crate::util::wait_until;

/// How long a fake handler waits for what the CLI should do next before it gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// `cat` on one node: stdin goes up `PUT /jobs/{id}/stdin` while the output comes down the job's
/// stream, 10 MB of non-UTF-8 bytes exactly, and the node's exit code is the CLI's.
#[test]
fn fake_exec_streams_stdin_to_one_node_and_back_exactly() {
    // What the stdin upload receives, for the stream to send back.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let tx = Mutex::new(Some(tx));
    let rx = Mutex::new(rx);
    let fake = Fake::start(move |mut c| match c.head.route().as_str() {
        "POST /api/v1/exec" => {
            let body = c.json_body();
            assert_eq!(
                body,
                json!({"target": "pi-1", "command": "cat", "stdin_stream": true, "async": true})
            );
            c.reply(
                202,
                &json!({"job_id": "j1", "state": "queued", "nodes": ["pi-1"]}),
            );
        }
        "PUT /api/v1/jobs/j1/stdin" => {
            let tx = tx.lock().unwrap().take().expect("one stdin upload");
            let n = c.body_pieces(|piece| tx.send(piece.to_vec()).unwrap());
            drop(tx);
            c.reply(200, &json!({"bytes": n}));
        }
        "GET /api/v1/jobs/j1/stream" => {
            assert_eq!(c.head.header("accept"), Some("application/x-ndjson"));
            c.start_chunked("application/x-ndjson", "");
            c.event(&json!({"event": "job", "job_id": "j1", "nodes": ["pi-1"]}))
                .unwrap();
            c.event(&json!({"event": "start", "job_id": "j1", "node": "pi-1"}))
                .unwrap();
            let rx = rx.lock().unwrap();
            while let Ok(piece) = rx.recv_timeout(PATIENCE) {
                let e = json!({"event": "stdout", "job_id": "j1", "node": "pi-1",
                               "data_b64": STANDARD.encode(&piece)});
                c.event(&e).unwrap();
            }
            c.event(
                &json!({"event": "exit", "job_id": "j1", "node": "pi-1", "state": "failed",
                            "exit_code": 3, "signal": null, "timed_out": false, "duration_ms": 9}),
            )
            .unwrap();
            c.event(
                &json!({"event": "summary", "job_id": "j1", "state": "failed",
                            "summary": summary(&[("failed", 1)])}),
            )
            .unwrap();
            c.end_chunked();
        }
        other => panic!("unexpected {other}"),
    });
    let input = noise(10_000_000, 7);
    let (out, err, code) = fake.run(&["exec", "pi-1", "cat"], Some(input.clone()));
    assert_eq!(code, 3, "{err}");
    assert_eq!(out.len(), input.len(), "{err}");
    assert!(out == input, "stdout differs from stdin");
    assert_eq!(err, "", "one node: nothing but its own stderr");
}

/// Several nodes: `[node] ` before each whole line, a line per node that did not succeed and the
/// summary on stderr, exit 1; the words of the command joined as ssh does; piped stdin sent whole.
#[test]
fn fake_exec_on_several_nodes_prefixes_lines_and_summarises() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen_bodies = Arc::clone(&bodies);
    let fake = Fake::start(move |mut c| {
        assert_eq!(c.head.route(), "POST /api/v1/exec");
        assert_eq!(c.head.header("accept"), Some("application/x-ndjson"));
        bodies.lock().unwrap().push(c.json_body());
        c.start_chunked("application/x-ndjson", "");
        for e in [
            json!({"event": "job", "job_id": "j2", "nodes": ["a", "b", "c"]}),
            json!({"event": "start", "job_id": "j2", "node": "a"}),
            json!({"event": "stdout", "job_id": "j2", "node": "a", "data": "lin"}),
            json!({"event": "stdout", "job_id": "j2", "node": "b", "data": "x\n"}),
            json!({"event": "stdout", "job_id": "j2", "node": "a", "data": "e\n"}),
            json!({"event": "stderr", "job_id": "j2", "node": "b", "data": "bad"}),
            json!({"event": "exit", "job_id": "j2", "node": "a", "state": "succeeded",
                   "exit_code": 0, "signal": null, "timed_out": false, "duration_ms": 1}),
            json!({"event": "exit", "job_id": "j2", "node": "b", "state": "failed",
                   "exit_code": 2, "signal": null, "timed_out": false, "duration_ms": 1}),
            json!({"event": "error", "job_id": "j2", "node": "c", "state": "offline",
                   "error": "c is offline", "code": "offline"}),
            json!({"event": "summary", "job_id": "j2", "state": "failed",
                   "summary": summary(&[("succeeded", 1), ("failed", 1), ("offline", 1)])}),
        ] {
            c.event(&e).unwrap();
        }
        c.end_chunked();
    });
    let (out, err, code) = fake.run(&["exec", "--lane", "apt", "glob:*", "uname", "-a"], None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "[b] x\n[a] line\n");
    assert_eq!(
        err,
        "[b] bad\n[b] failed: exit code 2\n[c] offline: c is offline\n\
         1 succeeded, 1 failed, 1 offline\n"
    );
    let (_, _, code) = fake.run(&["exec", "glob:*", "cat"], Some(b"abc".to_vec()));
    assert_eq!(code, 1);
    let bodies = seen_bodies.lock().unwrap();
    assert_eq!(
        bodies[0],
        json!({"target": "glob:*", "command": "uname -a", "lane": "apt"})
    );
    assert_eq!(
        bodies[1],
        json!({"target": "glob:*", "command": "cat", "stdin_b64": "YWJj"})
    );
}

/// More than 8 MiB of piped stdin for several nodes is refused before anything is sent (exit 2).
#[test]
fn fake_exec_refuses_too_much_stdin_for_several_nodes() {
    let fake = Fake::start(|c| panic!("nothing should be sent, got {}", c.head.route()));
    let (_, err, code) = fake.run(&["exec", "*", "cat"], Some(vec![b'x'; (8 << 20) + 1]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("over 8 MiB"), "{err}");
    let (_, err, code) = fake.run(&["cp", "a", "b"], None);
    assert_eq!(code, 2, "{err}");
    assert!(fake.routes().is_empty());
}

/// The fake's half of a job that runs until it is cancelled: a stream that ends (cancelled, 130)
/// only after `POST /jobs/j3/cancel`, or, if `end` is false, never (nor is the cancel answered).
fn cancellable(end: bool) -> Fake {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = (Mutex::new(tx), Mutex::new(rx));
    Fake::start(move |mut c| match c.head.route().as_str() {
        "POST /api/v1/exec" => {
            c.body();
            c.start_chunked("application/x-ndjson", "");
            c.event(&json!({"event": "job", "job_id": "j3", "nodes": ["pi-1"]}))
                .unwrap();
            c.event(&json!({"event": "start", "job_id": "j3", "node": "pi-1"}))
                .unwrap();
            c.event(
                &json!({"event": "stdout", "job_id": "j3", "node": "pi-1", "data": "running\n"}),
            )
            .unwrap();
            let cancelled = rx.lock().unwrap().recv_timeout(PATIENCE).is_ok();
            if end && cancelled {
                let _ = c.event(&json!({"event": "exit", "job_id": "j3", "node": "pi-1",
                    "state": "cancelled", "exit_code": null, "signal": 15, "timed_out": false,
                    "duration_ms": 3}));
                let _ = c.event(
                    &json!({"event": "summary", "job_id": "j3", "state": "cancelled",
                    "summary": summary(&[("cancelled", 1)])}),
                );
                c.end_chunked();
            } else {
                // Keeps the stream open until the CLI goes away.
                let raw = c.raw();
                raw.set_read_timeout(Some(PATIENCE)).unwrap();
                let _ = raw.read(&mut [0u8; 1]);
            }
        }
        "POST /api/v1/jobs/j3/cancel" => {
            c.body();
            tx.lock().unwrap().send(()).unwrap();
            if end {
                c.reply(200, &json!({"job_id": "j3", "state": "cancelled"}));
            } else {
                // A gateway that never answers the cancel: the second Ctrl-C must still act.
                let raw = c.raw();
                raw.set_read_timeout(Some(PATIENCE)).unwrap();
                let _ = raw.read(&mut [0u8; 1]);
            }
        }
        other => panic!("unexpected {other}"),
    })
}

/// Starts `gateway exec pi-1 'sleep 100'` and waits until it printed the first line (so it holds
/// the job's id and its Ctrl-C handler).
fn started(fake: &Fake) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = fake
        .cli(&["exec", "pi-1", "sleep 100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "running\n");
    (child, out)
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Ctrl-C sends the cancel and waits for the job's end, like ssh: exit 130.
#[test]
fn fake_ctrl_c_cancels_the_job_and_waits_for_its_end() {
    let fake = cancellable(true);
    let (mut child, mut out) = started(&fake);
    interrupt(&child);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelling job j3"), "{err}");
    assert!(
        fake.routes()
            .contains(&"POST /api/v1/jobs/j3/cancel".to_string()),
        "{:?}",
        fake.routes()
    );
}

/// A second Ctrl-C stops waiting at once (the job is the gateway's to finish), even while the
/// cancel is unanswered.
#[test]
fn fake_second_ctrl_c_exits_at_once() {
    let fake = cancellable(false);
    let (mut child, _out) = started(&fake);
    interrupt(&child);
    let cancel = "POST /api/v1/jobs/j3/cancel".to_string();
    wait_until(Duration::from_secs(20), "the cancel", || {
        fake.routes().contains(&cancel)
    });
    let second = std::time::Instant::now();
    interrupt(&child);
    let status = child.wait().unwrap();
    let took = second.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("not waiting for job j3"), "{err}");
    assert!(
        took < PATIENCE / 3,
        "{took:?}: the unanswered cancel held the second Ctrl-C back"
    );
}

/// `--async` prints the id; `--json` prints the job's JSON and still exits with the node's code.
#[test]
fn fake_exec_async_and_json() {
    let fake = Fake::start(|mut c| match c.head.route().as_str() {
        "POST /api/v1/exec" => {
            let body = c.json_body();
            if body["async"] == true {
                assert_eq!(body["queue_ttl_s"], 3600);
                c.reply(
                    202,
                    &json!({"job_id": "j4", "state": "queued", "nodes": ["a", "b"]}),
                );
                return;
            }
            c.start_chunked("application/x-ndjson", "");
            for e in [
                json!({"event": "job", "job_id": "j5", "nodes": ["pi-1"]}),
                json!({"event": "stdout", "job_id": "j5", "node": "pi-1", "data": "hidden\n"}),
                json!({"event": "exit", "job_id": "j5", "node": "pi-1", "state": "failed",
                       "exit_code": 5, "signal": null, "timed_out": false, "duration_ms": 1}),
                json!({"event": "summary", "job_id": "j5", "state": "failed",
                       "summary": summary(&[("failed", 1)])}),
            ] {
                c.event(&e).unwrap();
            }
            c.end_chunked();
        }
        "GET /api/v1/jobs/j5" => c.reply(
            200,
            &json!({"job_id": "j5", "state": "failed", "results": [{"node": "pi-1",
                    "state": "failed", "exit_code": 5, "stdout": "hidden\n"}]}),
        ),
        other => panic!("unexpected {other}"),
    });
    let (out, err, code) = fake.run(
        &[
            "exec",
            "--async",
            "--queue-ttl",
            "1h",
            "label:site=home",
            "reboot",
        ],
        None,
    );
    assert_eq!(
        (String::from_utf8(out).unwrap().as_str(), code),
        ("j4\n", 0),
        "{err}"
    );
    let (out, err, code) = fake.run(&["exec", "--json", "pi-1", "false"], None);
    assert_eq!(code, 5, "{err}");
    let job: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(job["results"][0]["exit_code"], 5);
}

/// The CLI's peak memory must stay far below the file's size.
const BOUNDED_KIB: u64 = 64 * 1024;
const BIG: u64 = 256 << 20;

/// A 256 MiB upload and download stream through in bounded memory, with matching SHA-256 on
/// both sides; the mode defaults to the local file's.
#[test]
fn fake_cp_streams_big_files_both_ways_in_bounded_memory() {
    use std::os::unix::fs::PermissionsExt;
    let pid = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (pid2, peak2) = (Arc::clone(&pid), Arc::clone(&peak));
    let fake = Fake::start(move |mut c| match c.head.route().as_str() {
        "PUT /api/v1/nodes/pi-1/files" => {
            assert_eq!(c.head.param("path"), Some("/opt/big"));
            assert_eq!(c.head.param("mode"), Some("0640"));
            assert_eq!(
                c.head.header("content-length"),
                Some(BIG.to_string().as_str())
            );
            let mut sha = Sha::new();
            let n = c.body_pieces(|p| sha.update(p));
            peak2.store(
                peak_kib(pid2.load(Ordering::SeqCst)) as u32,
                Ordering::SeqCst,
            );
            c.reply(
                200,
                &json!({"job_id": "j6", "state": "succeeded", "results": [
                {"node": "pi-1", "state": "succeeded", "bytes": n, "sha256": sha.hex()}],
                "summary": summary(&[("succeeded", 1)])}),
            );
        }
        "GET /api/v1/nodes/pi-1/files" => {
            assert_eq!(c.head.param("path"), Some("/var/big"));
            c.start_chunked("application/octet-stream", "X-Burrow-Job: j7\r\n");
            let piece = noise(1 << 20, 3);
            for _ in 0..(BIG >> 20) {
                c.chunk(&piece).unwrap();
            }
            peak2.store(
                peak_kib(pid2.load(Ordering::SeqCst)) as u32,
                Ordering::SeqCst,
            );
            c.end_chunked();
        }
        other => panic!("unexpected {other}"),
    });
    let local = fake.dir.path().join("big");
    std::fs::File::create(&local).unwrap().set_len(BIG).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = |args: &[&str]| {
        let mut child = fake
            .cli(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        pid.store(child.id(), Ordering::SeqCst);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (out, err, child.wait().unwrap().code())
    };
    let zeros = {
        let mut sha = Sha::new();
        let mb = vec![0u8; 1 << 20];
        for _ in 0..(BIG >> 20) {
            sha.update(&mb);
        }
        sha.hex()
    };
    let (out, err, code) = run(&["cp", local.to_str().unwrap(), "pi-1:/opt/big"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("pi-1:/opt/big: {BIG} bytes, sha256 {zeros}\n"));
    let kib = u64::from(peak.load(Ordering::SeqCst));
    assert!(kib > 0 && kib < BOUNDED_KIB, "upload peak {kib} KiB");

    let into = fake.dir.path().join("down");
    std::fs::create_dir(&into).unwrap();
    let (out, err, code) = run(&["cp", "pi-1:/var/big", into.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let got = into.join("big");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), BIG);
    let mut sha = Sha::new();
    let piece = noise(1 << 20, 3);
    for _ in 0..(BIG >> 20) {
        sha.update(&piece);
    }
    assert_eq!(
        out,
        format!("pi-1:/var/big: {BIG} bytes, sha256 {}\n", sha.hex())
    );
    let kib = u64::from(peak.load(Ordering::SeqCst));
    assert!(kib > 0 && kib < BOUNDED_KIB, "download peak {kib} KiB");
}

/// Many nodes: the target route with the target as given; a node that failed or holds other
/// bytes fails the copy (exit 1). A download cut short leaves no file.
#[test]
fn fake_cp_to_many_nodes_and_a_cut_download() {
    let fake = Fake::start(|mut c| match c.head.route().as_str() {
        "PUT /api/v1/files" => {
            assert_eq!(c.head.param("target"), Some("label:site=home"));
            assert_eq!(c.head.param("path"), Some("/opt/x"));
            assert_eq!(c.head.param("mode"), Some("0755"));
            assert_eq!(
                c.head.header("transfer-encoding"),
                Some("chunked"),
                "stdin: chunked"
            );
            let body = c.body();
            assert_eq!(body, b"payload");
            let sha = "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5";
            c.reply(
                200,
                &json!({"job_id": "j8", "state": "failed", "results": [
                {"node": "a", "state": "succeeded", "bytes": 7, "sha256": sha},
                {"node": "b", "state": "failed", "error": "no space left on device", "code": "io"}],
                "summary": summary(&[("succeeded", 1), ("failed", 1)])}),
            );
        }
        "GET /api/v1/nodes/pi-1/files" => {
            let raw = c.raw();
            let _ = raw
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Burrow-Job: j9\r\n\r\n");
            let _ = raw.write_all(&[b'z'; 500]);
        }
        "GET /api/v1/nodes/pi-2/files" => c.reply(
            404,
            &json!({"error": "no file /nope on pi-2", "code": "not_found"}),
        ),
        other => panic!("unexpected {other}"),
    });
    let (out, err, code) = fake.run(
        &["cp", "--mode", "0755", "-", "label:site=home:/opt/x"],
        Some(b"payload".to_vec()),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "a:/opt/x: 7 bytes, sha256 239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5\n"
    );
    assert!(
        err.contains("b:/opt/x: failed: no space left on device"),
        "{err}"
    );

    let dest = fake.dir.path().join("cut");
    let (_, err, code) = fake.run(&["cp", "pi-1:/var/x", dest.to_str().unwrap()], None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("after 500 of 1000 bytes") && err.contains("job j9"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(fake.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the data dir: {left:?}");

    let (_, err, code) = fake.run(&["cp", "pi-2:/nope", "-"], None);
    assert_eq!(code, 1);
    assert!(err.contains("no file /nope on pi-2"), "{err}");
}

/// `jobs ls|show|cancel|attach` call their routes; attach prints with exec's rules.
#[test]
fn fake_jobs_commands() {
    let fake = Fake::start(|mut c| {
        match c.head.route().as_str() {
        "GET /api/v1/jobs" => {
            assert_eq!(c.head.param("state"), Some("running"));
            assert_eq!(c.head.param("limit"), Some("1"));
            c.reply(200, &json!({"jobs": [{"job_id": "j1", "kind": "exec", "state": "running",
                "created_at": "2026-12-02T04:00:00Z", "actor": "ci", "command": "sleep 9",
                "target": "*", "lane": "default"}], "next_before": "j1"}));
        }
        "GET /api/v1/jobs/j1" => c.reply(200, &json!({"job_id": "j1", "kind": "exec",
            "state": "running", "target": "*", "command": "sleep 9", "results": [
                {"node": "a", "state": "running"}, {"node": "b", "state": "succeeded", "exit_code": 0}]})),
        "POST /api/v1/jobs/j1/cancel" => c.reply(200, &json!({"job_id": "j1", "state": "cancelled"})),
        "GET /api/v1/jobs/j1/stream" => {
            c.start_chunked("application/x-ndjson", "");
            for e in [
                json!({"event": "job", "job_id": "j1", "nodes": ["a", "b"]}),
                json!({"event": "stdout", "job_id": "j1", "node": "b", "data": "done\n"}),
                json!({"event": "exit", "job_id": "j1", "node": "b", "state": "succeeded",
                       "exit_code": 0, "signal": null, "timed_out": false, "duration_ms": 1}),
                json!({"event": "exit", "job_id": "j1", "node": "a", "state": "succeeded",
                       "exit_code": 0, "signal": null, "timed_out": false, "duration_ms": 1}),
                json!({"event": "summary", "job_id": "j1", "state": "succeeded",
                       "summary": summary(&[("succeeded", 2)])}),
            ] {
                c.event(&e).unwrap();
            }
            c.end_chunked();
        }
        "GET /api/v1/jobs/nope" => c.reply(404, &json!({"error": "no job nope", "code": "not_found"})),
        other => panic!("unexpected {other}"),
    }
    });
    let text = |out: Vec<u8>| String::from_utf8(out).unwrap();
    let (out, err, code) = fake.run(&["jobs", "ls", "--state", "running", "--limit", "1"], None);
    assert_eq!(code, 0, "{err}");
    let out = text(out);
    assert!(out.starts_with("ID  STATE    AGE"), "{out}");
    assert!(
        out.contains("j1  running") && out.contains("sleep 9"),
        "{out}"
    );
    assert!(err.contains("gateway jobs ls --before j1"), "{err}");

    let (out, _, code) = fake.run(&["jobs", "show", "j1"], None);
    assert_eq!(code, 0);
    assert!(text(out).contains("[a] running"));
    let (out, _, _) = fake.run(&["jobs", "show", "--json", "j1"], None);
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap()["job_id"],
        "j1"
    );

    let (out, _, code) = fake.run(&["jobs", "cancel", "j1"], None);
    assert_eq!(
        (text(out).as_str(), code),
        ("cancel of job j1 sent; it is cancelled\n", 0)
    );

    let (out, err, code) = fake.run(&["jobs", "attach", "j1"], None);
    assert_eq!(
        (text(out).as_str(), err.as_str(), code),
        ("[b] done\n", "2 succeeded\n", 0)
    );

    let (_, err, code) = fake.run(&["jobs", "show", "nope"], None);
    assert_eq!(code, 1);
    assert!(err.contains("no job nope"), "{err}");
}

/// `jobs attach`: Ctrl-C detaches (130) and cancels nothing; a refused exec (no such target) is
/// 255, like ssh when it cannot reach the host, with the gateway's reason.
#[test]
fn fake_attach_detaches_on_ctrl_c_and_refusals_are_255() {
    let fake = Fake::start(|mut c| {
        match c.head.route().as_str() {
        "GET /api/v1/jobs/j1" => c.reply(
            200,
            &json!({"job_id": "j1", "state": "running", "results": [{"node": "a", "state": "running"}]}),
        ),
        "GET /api/v1/jobs/j1/stream" => {
            c.start_chunked("application/x-ndjson", "");
            let e = json!({"event": "stdout", "job_id": "j1", "node": "a", "data": "tick\n"});
            c.event(&e).unwrap();
            // Open until the CLI goes away.
            let raw = c.raw();
            raw.set_read_timeout(Some(PATIENCE)).unwrap();
            let _ = raw.read(&mut [0u8; 1]);
        }
        "POST /api/v1/exec" => {
            c.body();
            c.reply(
                400,
                &json!({"error": "no node matches \"glob:nope-*\"", "code": "no_match"}),
            );
        }
        other => panic!("unexpected {other}"),
    }
    });
    let mut child = fake
        .cli(&["jobs", "attach", "j1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "tick\n", "one node: unprefixed");
    interrupt(&child);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("detached; job j1 goes on"), "{err}");
    assert!(!fake.routes().iter().any(|r| r.contains("cancel")));

    let (_, err, code) = fake.run(&["exec", "glob:nope-*", "true"], None);
    assert_eq!(code, 255);
    assert_eq!(err, "gateway: error: no node matches \"glob:nope-*\"\n");
}

/// The stdin upload refused with 409 because the command ended first (`yes | gateway exec pi-1
/// head -1`) is no news, as with ssh; any other refusal is said on stderr.
#[test]
fn fake_stdin_refusals_only_speak_when_they_matter() {
    for (status, quiet) in [(409, true), (500, false)] {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = (Mutex::new(tx), Mutex::new(rx));
        let fake = Fake::start(move |mut c| match c.head.route().as_str() {
            "POST /api/v1/exec" => {
                c.body();
                c.reply(
                    202,
                    &json!({"job_id": "j1", "state": "queued", "nodes": ["pi-1"]}),
                );
            }
            "PUT /api/v1/jobs/j1/stdin" => {
                c.body();
                let e = json!({"error": "the command ended after reading 0 bytes of its input",
                               "code": "conflict"});
                c.reply(status, &e);
                tx.lock().unwrap().send(()).unwrap();
            }
            "GET /api/v1/jobs/j1/stream" => {
                // The stdin answer first, so the CLI has it before the job ends.
                rx.lock().unwrap().recv_timeout(PATIENCE).unwrap();
                c.start_chunked("application/x-ndjson", "");
                for e in [
                    json!({"event": "job", "job_id": "j1", "nodes": ["pi-1"]}),
                    json!({"event": "exit", "job_id": "j1", "node": "pi-1", "state": "succeeded",
                           "exit_code": 0, "signal": null, "timed_out": false, "duration_ms": 1}),
                    json!({"event": "summary", "job_id": "j1", "state": "succeeded",
                           "summary": summary(&[("succeeded", 1)])}),
                ] {
                    c.event(&e).unwrap();
                }
                c.end_chunked();
            }
            other => panic!("unexpected {other}"),
        });
        let (_, err, code) = fake.run(&["exec", "pi-1", "true"], Some(b"data".to_vec()));
        assert_eq!(code, 0, "{err}");
        if quiet {
            assert_eq!(err, "");
        } else {
            assert!(err.contains("gateway: stdin: the command ended"), "{err}");
        }
    }
}
