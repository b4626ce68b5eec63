//! Files and streamed stdin through the bus: pushes to one and many nodes, pulls, interrupted
//! pushes, bounded gateway memory; a command's stdin streamed from `PUT /api/v1/jobs/{id}/stdin`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util::{online_node, wait_until, Agent, Gateway};

/// A repeatable byte pattern that is not all zeros (so a wrong offset shows in the hash).
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
}

fn pattern_sha(len: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        pattern(at, &mut buf[..n]);
        h.update(&buf[..n]);
        at += n as u64;
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes read from `r` and their SHA-256.
fn read_sha(mut r: impl Read) -> (u64, String) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf).unwrap();
        if got == 0 {
            return (n, hex(&h.finalize()));
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
}

fn file_sha(path: &std::path::Path) -> String {
    read_sha(std::fs::File::open(path).unwrap()).1
}

/// `PUT path_and_query` with a `len`-byte pattern body, sending only `send` bytes of it (less than
/// `len`: the upload is cut); calls `during` between chunks. Returns status and JSON (or text).
fn put(
    gw: &Gateway,
    path_and_query: &str,
    len: u64,
    send: u64,
    mut during: impl FnMut(u64),
) -> (u16, Value) {
    let token = gw.token("operator");
    let mut s = TcpStream::connect(gw.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "PUT {path_and_query} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < send {
        let n = (send - at).min(buf.len() as u64) as usize;
        pattern(at, &mut buf[..n]);
        if s.write_all(&buf[..n]).is_err() {
            break;
        }
        at += n as u64;
        during(at);
    }
    if send < len {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_file_pushed_to_one_node_and_pulled_back_is_the_same() {
    let (gw, agent) = online_node("files");
    let dir = agent.dir.path().join("drop");
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("big.bin");
    let len = 100 << 20;
    let (status, out) = put(
        &gw,
        &format!(
            "/api/v1/nodes/files/files?path={}&mode=0750",
            target.display()
        ),
        len,
        len,
        |_| {},
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["state"], "succeeded", "{out}");
    let want = pattern_sha(len);
    assert_eq!(out["results"][0]["sha256"], want.as_str());
    assert_eq!(out["results"][0]["bytes"], len);
    assert_eq!(file_sha(&target), want);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(leftovers(&dir), vec!["big.bin"], "no temporary file left");
    // Pull it back.
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let token = gw.token("operator");
    let resp = http
        .get(&gw.url(&format!(
            "/api/v1/nodes/files/files?path={}",
            target.display()
        )))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let job_id = resp.headers()["x-burrow-job"].to_str().unwrap().to_string();
    let got = read_sha(resp.into_body().into_reader());
    assert_eq!(got, (len, want.clone()));
    let (_, job) = gw.api("GET", &format!("/api/v1/jobs/{job_id}"), None);
    assert_eq!(job["kind"], "get");
    assert_eq!(job["results"][0]["sha256"], want.as_str(), "{job}");
    // Errors are JSON with a status that says what is wrong.
    let missing = http
        .get(&gw.url(&format!(
            "/api/v1/nodes/files/files?path={}/nope",
            dir.display()
        )))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    for bad in [
        "path=relative",
        "path=/tmp/",
        "mode=0755",
        "path=/x&mode=9999",
    ] {
        let (status, out) = put(
            &gw,
            &format!("/api/v1/nodes/files/files?{bad}"),
            3,
            3,
            |_| {},
        );
        assert_eq!(status, 400, "{bad}: {out}");
        assert!(out["error"].is_string(), "{out}");
    }
    let audit = std::fs::read_to_string(gw.data().join("audit.log")).unwrap_or_default();
    assert!(
        !audit.contains("\"data\""),
        "no file bytes in the audit log"
    );
}

#[test]
fn a_push_to_five_nodes_lands_everywhere_and_an_interrupted_push_leaves_nothing() {
    let gw = Gateway::start();
    let names = ["f-1", "f-2", "f-3", "f-4", "f-5"];
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start_with(&gw.join(&[]), n, &["--label", "fleet=files"]))
        .collect();
    for n in names {
        gw.wait_status(n, "online");
    }
    // Every agent runs on this machine: one path per node keeps them apart.
    let base = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::create_dir(base.path().join(n)).unwrap();
    }
    let len = 20 << 20;
    let want = pattern_sha(len);
    for n in names {
        let (status, out) = put(
            &gw,
            &format!(
                "/api/v1/files?target=label:fleet%3Dfiles,glob:{n}&path={}/{n}/agent.new",
                base.path().display()
            ),
            len,
            len,
            |_| {},
        );
        assert_eq!(
            (status, out["state"].as_str()),
            (200, Some("succeeded")),
            "{out}"
        );
        assert_eq!(out["results"].as_array().unwrap().len(), 1);
    }
    // One push to all five, into the same relative place: here they share one directory, so the
    // five writes race for one name and the last rename wins; each must still be whole.
    let shared = base.path().join("shared.bin");
    let (status, out) = put(
        &gw,
        &format!(
            "/api/v1/files?target=label:fleet%3Dfiles&path={}",
            shared.display()
        ),
        len,
        len,
        |_| {},
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["summary"]["succeeded"], 5, "{out}");
    for r in out["results"].as_array().unwrap() {
        assert_eq!(r["sha256"], want.as_str());
    }
    assert_eq!(file_sha(&shared), want);
    for n in names {
        assert_eq!(file_sha(&base.path().join(n).join("agent.new")), want);
    }
    // Cut after 4 MiB of 20: no file, no temporary file.
    let cut = base.path().join("f-1").join("cut.bin");
    let (status, out) = put(
        &gw,
        &format!("/api/v1/nodes/f-1/files?path={}", cut.display()),
        len,
        4 << 20,
        |_| {},
    );
    eprintln!("cut upload answered {status}: {out}");
    wait_until(Duration::from_secs(10), "the cut transfer to end", || {
        let (_, jobs) = gw.api("GET", "/api/v1/jobs?node=f-1&limit=1", None);
        jobs["jobs"][0]["state"] != "running"
    });
    assert!(!cut.exists(), "an interrupted push left a file");
    assert_eq!(leftovers(&base.path().join("f-1")), vec!["agent.new"]);
    drop(agents);
}

#[test]
fn gateway_memory_stays_bounded_during_a_1_gb_push() {
    let (gw, agent) = online_node("bulk");
    let target = agent.dir.path().join("gigabyte");
    let pid = gw.proc.child.id();
    let before = rss_kib(pid);
    let mut peak = before;
    let len = 1 << 30;
    let (status, out) = put(
        &gw,
        &format!("/api/v1/nodes/bulk/files?path={}", target.display()),
        len,
        len,
        |at| {
            if at % (16 << 20) == 0 {
                peak = peak.max(rss_kib(pid));
            }
        },
    );
    assert_eq!(
        (status, out["state"].as_str()),
        (200, Some("succeeded")),
        "{out}"
    );
    assert_eq!(std::fs::metadata(&target).unwrap().len(), len);
    eprintln!("gateway RSS {before} KiB before, {peak} KiB at most during a 1 GiB push");
    assert!(
        peak < before + 64 * 1024,
        "RSS grew by {} KiB",
        peak - before
    );
}

#[test]
fn stdin_streams_ten_megabytes_exactly() {
    let (gw, _agent) = online_node("cat");
    let (status, out) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "cat", "async": true, "stdin_stream": true, "command": "cat"})),
    );
    assert_eq!(status, 202, "{out}");
    let id = out["job_id"].as_str().unwrap().to_string();
    // Follow the output while the input goes in: stored output keeps only its head.
    let follow = {
        let (url, token) = (
            gw.url(&format!("/api/v1/jobs/{id}/stream")),
            gw.token("operator"),
        );
        std::thread::spawn(move || {
            let http: ureq::Agent = ureq::Agent::config_builder().build().into();
            let resp = http
                .get(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .call()
                .unwrap();
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut last = Value::Null;
            for line in BufReader::new(resp.into_body().into_reader()).lines() {
                let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
                if e["event"] == "stdout" {
                    let bytes = match e["data"].as_str() {
                        Some(t) => t.as_bytes().to_vec(),
                        None => STANDARD.decode(e["data_b64"].as_str().unwrap()).unwrap(),
                    };
                    n += bytes.len() as u64;
                    h.update(&bytes);
                }
                last = e;
            }
            (n, hex(&h.finalize()), last)
        })
    };
    let len = 10 << 20;
    let (status, out) = put(&gw, &format!("/api/v1/jobs/{id}/stdin"), len, len, |_| {});
    assert_eq!((status, out["bytes"].as_u64()), (200, Some(len)), "{out}");
    let (n, sha, last) = follow.join().unwrap();
    assert_eq!((n, sha), (len, pattern_sha(len)));
    assert_eq!(last["state"], "succeeded", "{last}");
    // Fixed stdin from the body, to several nodes at once.
    let (status, out) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "cat", "stdin": "hi\n", "command": "cat"})),
    );
    assert_eq!(
        (status, out["results"][0]["stdout"].as_str()),
        (200, Some("hi\n")),
        "{out}"
    );
    let (status, _) = gw.api("PUT", &format!("/api/v1/jobs/{id}/stdin"), None);
    assert_ne!(status, 200, "a second stdin for an ended job is refused");
}

/// Regression: a push cut by a gateway crash stayed `queued` in the store for ever (a transfer is
/// run by its uploader's request, which the crash took with it). It now ends `lost`, and the node
/// keeps no partial file.
#[test]
fn a_transfer_cut_by_a_gateway_crash_ends_lost_and_leaves_no_file() {
    let (gw, agent) = online_node("crashy");
    let dir = agent.dir.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("half.bin");
    let token = gw.token("operator");
    let mut s = TcpStream::connect(gw.api).unwrap();
    let len: u64 = 100 << 20;
    write!(
        s,
        "PUT /api/v1/nodes/crashy/files?path={} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {len}\r\n\r\n",
        target.display()
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    pattern(0, &mut buf);
    s.write_all(&buf).unwrap();
    let mut job_id = String::new();
    wait_until(
        Duration::from_secs(10),
        "the transfer to be under way",
        || {
            let (_, jobs) = gw.api("GET", "/api/v1/jobs?limit=1", None);
            job_id = jobs["jobs"][0]["job_id"].as_str().unwrap_or("").to_string();
            jobs["jobs"][0]["kind"] == "put" && jobs["jobs"][0]["state"] == "running"
        },
    );
    let gw = gw.crash_restart();
    drop(s);
    wait_until(Duration::from_secs(10), "the cut transfer to end", || {
        gw.api("GET", &format!("/api/v1/jobs/{job_id}"), None).1["state"] == "lost"
    });
    wait_until(
        Duration::from_secs(10),
        "no partial file on the node",
        || leftovers(&dir).is_empty(),
    );
}
