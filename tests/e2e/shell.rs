//! `gateway shell` driven in a real terminal: a tmux pane (private server, 80×24) runs the CLI
//! against a real gateway and agent; keys go in with `send-keys`, the screen comes back with
//! `capture-pane`, polled with a deadline. Also the API's refusals around `"tty"`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::util::{bin, online_node, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A tmux server of its own with one session running `gateway shell NODE ARGS…`; the pane stays
/// after the CLI exits and shows `exit=<code>`. Killed on drop.
struct Pane {
    dir: tempfile::TempDir,
}

impl Pane {
    fn start(data: &Path, node: &str, args: &[&str]) -> Pane {
        let dir = tempfile::tempdir().unwrap();
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut line = format!(
            "{} --data-dir {} shell {node}",
            quote(bin("gateway").to_str().unwrap()),
            quote(data.to_str().unwrap())
        );
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let script = dir.path().join("run.sh");
        std::fs::write(
            &script,
            format!("{line}\necho \"exit=$?\"\nexec sleep 600\n"),
        )
        .unwrap();
        let pane = Pane { dir };
        pane.tmux(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            &format!(
                "BURROW_CONFIG=/dev/null TERM=xterm-256color sh {}",
                script.display()
            ),
        ]);
        pane
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tmux.sock")
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend(keys);
        self.tmux(&args);
    }

    fn text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "0", "-l", text]);
    }

    /// Waits until the screen satisfies `cond`; the screen in the panic message otherwise.
    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(WAIT, what, || {
                last = self.screen();
                cond(&last)
            })
        }));
        assert!(ok.is_ok(), "{what}; the screen:\n{last}");
        last
    }

    fn wait_text(&self, text: &str) -> String {
        self.wait_for(text, |s| s.contains(text))
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .arg("kill-server")
            .output();
    }
}

#[test]
fn shell_runs_cat_until_ctrl_d() {
    let (gw, _agent) = online_node("pi-1");
    let pane = Pane::start(&gw.data(), "pi-1", &["echo ready; exec cat"]);
    // Typed once the terminal is raw (before that the local terminal would echo it too).
    pane.wait_text("ready");
    // The terminal echoes the line, then cat prints it: twice on the screen.
    pane.text("hello-shell");
    pane.keys(&["Enter"]);
    pane.wait_for("the line echoed and printed by cat", |s| {
        s.matches("hello-shell").count() == 2
    });
    pane.keys(&["C-d"]);
    pane.wait_text("exit=0");
}

#[test]
fn shell_resize_reaches_the_remote_terminal() {
    let (gw, _agent) = online_node("pi-1");
    let script = "trap 'echo WINCH; stty size' WINCH; stty size; echo ready; \
                  while :; do sleep 0.1; done";
    let pane = Pane::start(&gw.data(), "pi-1", &[script]);
    let screen = pane.wait_text("ready");
    assert!(screen.contains("24 80"), "initial size:\n{screen}");
    pane.tmux(&["resize-window", "-t", "0", "-x", "100", "-y", "30"]);
    pane.wait_for("WINCH and the new size", |s| {
        s.contains("WINCH") && s.contains("30 100")
    });
    // Ctrl-C ends the loop remotely (sh killed by SIGINT: 128+2).
    pane.keys(&["C-c"]);
    pane.wait_text("exit=130");
}

#[test]
fn shell_ctrl_c_interrupts_the_remote_command_not_the_cli() {
    let (gw, _agent) = online_node("pi-1");
    // The remote shell traps SIGINT and exits 7: only a Ctrl-C that reached it makes exit=7.
    let script = "trap 'echo remote-got-INT; exit 7' INT; echo started; sleep 100; echo after";
    let pane = Pane::start(&gw.data(), "pi-1", &[script]);
    pane.wait_text("started");
    pane.keys(&["C-c"]);
    let screen = pane.wait_text("exit=7");
    assert!(screen.contains("remote-got-INT"), "{screen}");
    assert!(!screen.contains("after"), "{screen}");
}

#[test]
fn shell_login_shell_by_default_and_exit_code() {
    let (gw, _agent) = online_node("pi-1");
    let pane = Pane::start(&gw.data(), "pi-1", &[]);
    pane.wait_for("the login shell's prompt", |s| !s.trim().is_empty());
    pane.text("[ -t 0 ] && echo on-a-tty; exit 5");
    pane.keys(&["Enter"]);
    let screen = pane.wait_text("exit=5");
    assert!(screen.contains("on-a-tty"), "{screen}");
}

#[test]
fn tty_is_refused_with_many_nodes_with_stdin_and_queued() {
    let (gw, _agent) = online_node("pi-1");
    let refusals = [
        json!({"target": "*", "command": "true", "tty": true}),
        json!({"target": "pi-1", "command": "true", "tty": true, "stdin_b64": "eA=="}),
        json!({"target": "pi-1", "command": "true", "tty": true, "queue_ttl_s": 60}),
        json!({"target": "pi-1", "command": "true", "tty": {"rows": 0, "cols": 80}}),
        json!({"target": "pi-1", "command": "true", "tty": "yes"}),
    ];
    let agent2 = crate::util::Agent::start(&gw.join(&[]), "pi-2");
    gw.wait_status("pi-2", "online");
    for body in refusals {
        let (status, answer) = gw.api("POST", "/api/v1/exec", Some(body.clone()));
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    drop(agent2);
    // A job without a terminal: resize and signal are conflicts; bad sizes are bad requests.
    let (status, job) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "pi-1", "command": "sleep 5", "async": true})),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["job_id"].as_str().unwrap();
    let resize = format!("/api/v1/jobs/{id}/resize");
    let (status, answer) = gw.api("POST", &resize, Some(json!({"rows": 30, "cols": 100})));
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = gw.api("POST", &resize, Some(json!({"rows": 0, "cols": 100})));
    assert_eq!(status, 400, "{answer}");
    let signal = format!("/api/v1/jobs/{id}/signal");
    let (status, answer) = gw.api("POST", &signal, Some(json!({"signal": "BOGUS"})));
    assert_eq!(status, 400, "{answer}");
}

#[test]
fn tty_job_resize_and_signal_through_the_api() {
    let (gw, _agent) = online_node("pi-1");
    let (status, job) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "pi-1", "command": "trap 'stty size; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
                    "async": true, "tty": {"rows": 20, "cols": 70}})),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    wait_until(WAIT, "the job running", || {
        gw.api("GET", &format!("/api/v1/jobs/{id}"), None).1["results"][0]["state"] == "running"
    });
    let resize = format!("/api/v1/jobs/{id}/resize");
    let mut ok = false;
    wait_until(WAIT, "resize accepted", || {
        ok = gw
            .api("POST", &resize, Some(json!({"rows": 33, "cols": 99})))
            .0
            == 200;
        ok
    });
    let (status, answer) = gw.api(
        "POST",
        &format!("/api/v1/jobs/{id}/signal"),
        Some(json!({"signal": "TERM"})),
    );
    assert_eq!(status, 200, "{answer}");
    let mut done = serde_json::Value::Null;
    wait_until(WAIT, "the job ended", || {
        done = gw.api("GET", &format!("/api/v1/jobs/{id}"), None).1;
        done["results"][0]["exit_code"] == 3
    });
    let out = gw.cli(&["jobs", "attach", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("33 99"),
        "{out:?}"
    );
    assert_eq!(status, 200);
}
