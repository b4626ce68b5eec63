//! The CLI of the command bus (issue 7 point 10) against the real gateway and real agents:
//! `gateway exec` like ssh on one node and with `[node]` prefixes on many, stdin both ways,
//! Ctrl-C cancelling, `--async` with `gateway jobs`, and `gateway cp` up and down. The same CLI
//! is checked against a fake of the jobs API in `cli_contract.rs`; these need the server side.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{bin, children, isolate, wait_until, Agent, Gateway, Proc};

/// An agent joined to `gw` as `name` with extra `agent run` arguments (labels, capabilities).
fn agent(gw: &Gateway, name: &str, extra: &[&str]) -> Agent {
    let dir = tempfile::Builder::new()
        .prefix("burrow-agent")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new(bin("agent"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--log",
            "debug",
            "run",
            "--join",
            &gw.join(&[]),
            "--name",
            name,
        ])
        .args(extra);
    let proc = Proc::spawn(cmd, dir.path().join("agent.log"));
    Agent { proc, dir }
}

/// `gateway --data-dir … ARGS` with `input` on stdin (None: /dev/null).
fn cli(gw: &Gateway, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(bin("gateway"));
    isolate(&mut cmd)
        .arg("--data-dir")
        .arg(gw.data())
        .args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let Some(input) = input else {
        return cmd.stdin(Stdio::null()).output().unwrap();
    };
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (stdout, stderr, exit code)
fn run(gw: &Gateway, args: &[&str]) -> (String, String, Option<i32>) {
    let out = cli(gw, args, None);
    (text(&out.stdout), text(&out.stderr), out.status.code())
}

/// Deterministic bytes that are not UTF-8.
fn noise(len: usize) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// All descendants of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            all.push(c);
            todo.push(c);
        }
    }
    all
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn cli_exec_on_one_node_behaves_like_ssh() {
    let gw = Gateway::start();
    let _a = Agent::start(&gw.join(&[]), "pi-1");
    gw.wait_status("pi-1", "online");

    // Words joined and run by sh -c, without `--`; hyphens pass on.
    let (out, err, code) = run(&gw, &["exec", "pi-1", "uname", "-a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("Linux"), "{out}");
    let (out, _, code) = run(&gw, &["exec", "pi-1", "ls", "-la", "/"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines().any(|l| l.ends_with(" ..")),
        "`-la` reached ls: {out}"
    );
    let (out, err, code) = run(
        &gw,
        &["exec", "pi-1", "echo $((1+2)) && echo e >&2 && exit 3"],
    );
    assert_eq!((out.as_str(), err.as_str(), code), ("3\n", "e\n", Some(3)));
    // The old form with `--` still works.
    let (out, _, code) = run(&gw, &["exec", "pi-1", "--", "echo", "old"]);
    assert_eq!((out.as_str(), code), ("old\n", Some(0)));
    // --argv: no shell.
    let (out, _, code) = run(
        &gw,
        &["exec", "--argv", "pi-1", "sh", "-c", "echo a && exit 4"],
    );
    assert_eq!((out.as_str(), code), ("a\n", Some(4)));
    let (out, _, _) = run(&gw, &["exec", "--argv", "pi-1", "echo", "$HOME"]);
    assert_eq!(out, "$HOME\n");
    // Env and cwd.
    let (out, _, _) = run(
        &gw,
        &[
            "exec",
            "--env",
            "G=hej",
            "--cwd",
            "/tmp",
            "pi-1",
            "echo $G; pwd",
        ],
    );
    assert_eq!(out, "hej\n/tmp\n");
    // Timeout 124, signal 128+N, never ran 255.
    let (_, err, code) = run(&gw, &["exec", "--timeout", "1s", "pi-1", "sleep 30"]);
    assert_eq!(code, Some(124), "{err}");
    let (_, _, code) = run(&gw, &["exec", "pi-1", "kill -9 $$"]);
    assert_eq!(code, Some(137));
    let (_, err, code) = run(&gw, &["exec", "no-such-node", "true"]);
    assert_eq!(code, Some(255), "{err}");
    assert!(!err.is_empty());
    // --json: the job's JSON, same exit code.
    let (out, _, code) = run(&gw, &["exec", "--json", "pi-1", "echo j; exit 6"]);
    assert_eq!(code, Some(6));
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["results"][0]["stdout"], "j\n", "{job}");
    assert_eq!(job["results"][0]["node"], "pi-1");
}

#[test]
fn cli_exec_stdin_round_trips_10_mb_to_one_node() {
    let gw = Gateway::start();
    let _a = Agent::start(&gw.join(&[]), "pi-1");
    gw.wait_status("pi-1", "online");
    let out = cli(&gw, &["exec", "pi-1", "cat"], Some(b"hi\n"));
    assert_eq!(
        (text(&out.stdout).as_str(), out.status.code()),
        ("hi\n", Some(0))
    );
    // Also after `--`, as the issue writes it.
    let out = cli(&gw, &["exec", "pi-1", "--", "cat"], Some(b"hi\n"));
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let input = noise(10_000_000);
    let out = cli(
        &gw,
        &["exec", "--timeout", "2m", "pi-1", "cat"],
        Some(&input),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin did not round-trip exactly");
    // -n: no stdin at all, the command reads EOF at once.
    let out = cli(&gw, &["exec", "-n", "pi-1", "wc -c"], Some(b"ignored"));
    assert_eq!(text(&out.stdout).trim(), "0");
}

#[test]
fn cli_exec_on_many_nodes_prefixes_lines_and_summarises() {
    let gw = Gateway::start();
    let _a = agent(&gw, "bus-a", &["--label", "site=home"]);
    let _b = agent(&gw, "bus-b", &["--label", "site=work"]);
    let _c = agent(
        &gw,
        "bus-c",
        &["--label", "site=work", "--capability", "gpu"],
    );
    let mut d = agent(&gw, "bus-d", &[]);
    for n in ["bus-a", "bus-b", "bus-c", "bus-d"] {
        gw.wait_status(n, "online");
    }
    d.proc.terminate();
    gw.wait_status("bus-d", "offline");

    let (out, err, code) = run(&gw, &["exec", "*", "echo one; echo two"]);
    assert_eq!(code, Some(1), "an offline node is no success: {err}");
    for n in ["bus-a", "bus-b", "bus-c"] {
        assert!(out.contains(&format!("[{n}] one\n")), "{out}");
        assert!(out.contains(&format!("[{n}] two\n")), "{out}");
    }
    assert!(err.contains("[bus-d] offline"), "{err}");
    assert!(err.trim_end().ends_with("3 succeeded, 1 offline"), "{err}");

    let (out, err, code) = run(&gw, &["exec", "bus-a,bus-b", "true"]);
    assert_eq!((out.as_str(), code), ("", Some(0)), "{err}");
    assert_eq!(err, "2 succeeded\n");
    let (out, err, code) = run(&gw, &["exec", "label:site=work", "exit 2"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("[bus-b] failed: exit code 2") && err.contains("[bus-c] failed"),
        "{err}"
    );
    assert!(out.is_empty());
    // One node matched: ssh's rules.
    let (out, _, code) = run(&gw, &["exec", "cap:gpu", "echo gpu; exit 5"]);
    assert_eq!((out.as_str(), code), ("gpu\n", Some(5)));
    let (out, _, code) = run(&gw, &["exec", "any:label:site=work", "echo any"]);
    assert_eq!((out.as_str(), code), ("any\n", Some(0)));
    // Piped stdin goes whole to each node.
    let out = cli(&gw, &["exec", "bus-a,bus-b", "cat"], Some(b"abc\n"));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[bus-a] abc\n") && stdout.contains("[bus-b] abc\n"),
        "{stdout}{}",
        text(&out.stderr)
    );
    // --batch 1: one node at a time, all run.
    let (_, err, code) = run(&gw, &["exec", "--batch", "1", "label:site=work", "true"]);
    assert_eq!((err.as_str(), code), ("2 succeeded\n", Some(0)));
}

/// Starts `gateway exec pi-1 COMMAND` (COMMAND prints `started` first) and waits for that line.
fn started(gw: &Gateway, command: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(bin("gateway"));
    isolate(&mut cmd).arg("--data-dir").arg(gw.data());
    let mut child = cmd
        .args(["exec", "pi-1", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    (child, out)
}

#[test]
fn cli_ctrl_c_cancels_the_job_and_leaves_no_process() {
    let gw = Gateway::start();
    let a = Agent::start(&gw.join(&[]), "pi-1");
    gw.wait_status("pi-1", "online");
    let (mut child, _out) = started(&gw, "echo started; sleep 100 & sleep 100");
    let agent_pid = a.proc.child.id();
    assert!(
        descendants(agent_pid).iter().any(|p| comm(*p) == "sleep"),
        "the command runs under the agent"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelling job"), "{err}");
    wait_until(Duration::from_secs(20), "no sleep left on the node", || {
        !descendants(agent_pid).iter().any(|p| comm(*p) == "sleep")
    });
    let (out, _, _) = run(&gw, &["jobs", "ls", "--node", "pi-1", "--limit", "1"]);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains("cancelled")),
        "{out}"
    );
}

#[test]
fn cli_async_jobs_ls_show_attach_cancel() {
    let gw = Gateway::start();
    let _a = Agent::start(&gw.join(&[]), "pi-1");
    gw.wait_status("pi-1", "online");
    let (id, err, code) = run(
        &gw,
        &["exec", "--async", "pi-1", "echo one; sleep 1; echo two"],
    );
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    assert!(!id.is_empty());
    let (out, err, code) = run(&gw, &["jobs", "attach", &id]);
    assert_eq!((out.as_str(), code), ("one\ntwo\n", Some(0)), "{err}");
    // Attach again: the stored output is replayed.
    let (out, _, _) = run(&gw, &["jobs", "attach", &id]);
    assert_eq!(out, "one\ntwo\n");
    let (out, _, code) = run(&gw, &["jobs", "show", &id]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("succeeded") && out.contains("out | one"),
        "{out}"
    );
    let (out, _, _) = run(&gw, &["jobs", "show", "--json", &id]);
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["job_id"], id.as_str());
    let (out, _, _) = run(&gw, &["jobs", "ls"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("echo one")),
        "{out}"
    );

    let (id, _, _) = run(&gw, &["exec", "--async", "pi-1", "sleep 100"]);
    let id = id.trim().to_string();
    let (out, err, code) = run(&gw, &["jobs", "cancel", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id), "{out}");
    let (_, _, code) = run(&gw, &["jobs", "attach", &id]);
    assert_ne!(code, Some(0));
    let (out, _, _) = run(&gw, &["jobs", "show", "--json", &id]);
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["results"][0]["state"], "cancelled", "{job}");
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)[..64].to_string()
}

#[test]
fn cli_cp_pushes_pulls_and_broadcasts_with_matching_sha256() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start();
    let _a = agent(&gw, "pi-1", &["--label", "site=home"]);
    let _b = agent(&gw, "pi-2", &["--label", "site=home"]);
    gw.wait_status("pi-1", "online");
    gw.wait_status("pi-2", "online");
    // The agents run on this host as this user: their "remote" paths are in this temp dir.
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("payload");
    std::fs::write(&local, noise(20_000_000)).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750)).unwrap();
    let sha = sha256(&local);

    let remote = work.path().join("on-node");
    let spec = format!("pi-1:{}", remote.display());
    let (out, err, code) = run(&gw, &["cp", local.to_str().unwrap(), &spec]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("pi-1:{}: 20000000 bytes, sha256 {sha}\n", remote.display())
    );
    assert_eq!(sha256(&remote), sha);
    let mode = std::fs::metadata(&remote).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750, "the local mode by default");

    let back = work.path().join("back");
    let (out, err, code) = run(&gw, &["cp", &spec, back.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&sha), "{out}");
    assert_eq!(sha256(&back), sha);
    // `-`: stdout.
    let out = cli(&gw, &["cp", &spec, "-"], None);
    assert_eq!(out.stdout.len(), 20_000_000);

    // Many nodes, and a remote directory taking the local name; stdin with --mode.
    let dir = work.path().join("fleet");
    std::fs::create_dir(&dir).unwrap();
    let (out, err, code) = run(
        &gw,
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("label:site=home:{}/", dir.display()),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(sha256(&dir.join("payload")), sha);
    let piped = dir.join("piped");
    let out = cli(
        &gw,
        &[
            "cp",
            "--mode",
            "0600",
            "-",
            &format!("pi-2:{}", piped.display()),
        ],
        Some(b"x"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&piped).unwrap(), b"x");

    // Errors: a relative path on the node (usage, 2), a missing file (1).
    let (_, _, code) = run(&gw, &["cp", local.to_str().unwrap(), "pi-1:relative"]);
    assert_eq!(code, Some(2));
    let (_, err, code) = run(
        &gw,
        &["cp", "pi-1:/nonexistent/file", back.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(sha256(&back), sha, "a failed download leaves the old file");
}
