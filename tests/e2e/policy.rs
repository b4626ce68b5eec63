//! The node owner's exec policy (docs/policy.md) against a real agent: what runs, what is refused
//! (and with which rule), the user jobs run as, the env and file rules, and a reload on SIGHUP.

use std::os::unix::fs::symlink;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{wait_until, Agent, Gateway};

/// A gateway and one online agent started with `--policy <file with text>`; the file stays in the
/// returned dir (reload tests rewrite it).
fn node_with_policy(name: &str, text: &str) -> (Gateway, Agent, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("burrow-policy")
        .tempdir()
        .unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, text).unwrap();
    let gw = Gateway::start();
    let agent = Agent::start_with(&gw.join(&[]), name, &["--policy", file.to_str().unwrap()]);
    gw.wait_status(name, "online");
    (gw, agent, dir)
}

/// The node's result of `body` run through the fleet route (which answers with every node's state).
fn result(gw: &Gateway, node: &str, mut body: Value) -> Value {
    body["target"] = json!(node);
    let (status, out) = gw.api("POST", "/api/v1/exec", Some(body.clone()));
    assert_eq!(status, 200, "{body}: {out}");
    out["results"][0].clone()
}

/// Asserts that `body` ended `refused` on `node`, naming `rule`, and was logged in policy.log.
fn assert_refused(gw: &Gateway, agent: &Agent, node: &str, body: Value, rule: &str) {
    let r = result(gw, node, body.clone());
    assert_eq!(r["state"], "refused", "{body}: {r:#}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("(rule {rule})")),
        "{body}: expected rule {rule}: {r:#}"
    );
    assert!(
        policy_log(agent).contains(&format!("\"rule\":\"{rule}\"")),
        "policy.log: {}",
        policy_log(agent)
    );
}

fn policy_log(agent: &Agent) -> String {
    std::fs::read_to_string(agent.dir.path().join("data").join("policy.log")).unwrap_or_default()
}

const UPTIME_ONLY: &str = "mode = \"allowlist\"\n[[rule]]\nprogram = \"/usr/bin/uptime\"\n";

#[test]
fn allowlist_runs_only_the_listed_program_and_refuses_every_wrapper() {
    let (gw, agent, dir) = node_with_policy("allow", UPTIME_ONLY);
    let ran = result(&gw, "allow", json!({"argv": ["uptime"]}));
    assert_eq!(ran["state"], "succeeded", "{ran:#}");
    assert!(ran["stdout"].as_str().unwrap().contains("load average"));
    // The single-node route answers a refusal as 403 with the rule.
    let (status, out) = gw.exec("allow", json!({"argv": ["env", "uptime"]}));
    assert_eq!(status, 403, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("(rule wrapper)"),
        "{out}"
    );

    let link = dir.path().join("bin");
    std::fs::create_dir(&link).unwrap();
    symlink("/bin/sh", link.join("uptime")).unwrap();
    for (body, rule) in [
        (json!({"argv": ["env", "uptime"]}), "wrapper"),
        (json!({"argv": ["env", "-S", "uptime -p"]}), "wrapper"),
        (json!({"argv": ["sh", "-c", "uptime"]}), "wrapper"),
        (
            json!({"argv": ["python3", "-c", "import os; os.system('uptime')"]}),
            "interpreter",
        ),
        (json!({"argv": [link.join("uptime")]}), "wrapper"),
        (json!({"argv": ["/bin/true"]}), "allowlist"),
        (json!({"command": "uptime"}), "allow_shell"),
    ] {
        assert_refused(&gw, &agent, "allow", body, rule);
    }
    if std::process::Command::new("busybox")
        .arg("true")
        .status()
        .is_ok()
    {
        assert_refused(
            &gw,
            &agent,
            "allow",
            json!({"argv": ["busybox", "sh", "-c", "uptime"]}),
            "wrapper",
        );
    } else {
        eprintln!("busybox is not installed: skipping its case (apt-get install -y busybox)");
    }
    // The gateway reads the summary, not the rules.
    wait_until(Duration::from_secs(10), "the policy summary", || {
        gw.node("allow")["policy"]["mode"] == "allowlist"
    });
    let summary = &gw.node("allow")["policy"];
    assert_eq!(summary["rules"], 1, "{summary}");
    assert_eq!(summary["allow_shell"], false, "{summary}");
}

#[test]
fn deny_all_refuses_every_command_and_file_transfer() {
    let (gw, agent, _dir) = node_with_policy("deny", "mode = \"deny-all\"\n");
    for body in [json!({"argv": ["true"]}), json!({"command": "true"})] {
        assert_refused(&gw, &agent, "deny", body, "deny-all");
    }
    let target = agent.dir.path().join("pushed.txt");
    let (status, out) = gw.api(
        "PUT",
        &format!("/api/v1/nodes/deny/files?path={}", target.display()),
        Some(json!("data")),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"][0]["state"], "refused", "{out}");
    let error = out["results"][0]["error"].as_str().unwrap();
    assert!(error.contains("(rule file_dirs)"), "{out}");
    assert!(!target.exists());
    let (status, out) = gw.api("GET", "/api/v1/nodes/deny/files?path=/etc/hostname", None);
    assert_eq!(status, 403, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("(rule file_dirs)"),
        "{out}"
    );
}

#[test]
fn run_as_drops_to_the_user() {
    let me = std::process::Command::new("id").arg("-u").output().unwrap();
    if me.stdout != b"0\n" {
        eprintln!("not root: skipping (run_as needs the agent to run as root)");
        return;
    }
    let (gw, _agent, _dir) = node_with_policy("runas", "run_as = \"nobody\"\n");
    let r = result(&gw, "runas", json!({"argv": ["id", "-u"]}));
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(r["stdout"], "65534\n", "{r:#}");
    let r = result(&gw, "runas", json!({"command": "id -G"}));
    assert_eq!(
        r["stdout"], "65534\n",
        "no supplementary groups kept: {r:#}"
    );
}

#[test]
fn env_rules_refuse_ld_preload_and_path() {
    // Top-level keys go before the first [[rule]] table (after it they would belong to the rule).
    let policy = format!("allow_env = [\"LC_*\"]\n{UPTIME_ONLY}");
    let (gw, agent, _dir) = node_with_policy("envs", &policy);
    for var in ["LD_PRELOAD", "PATH", "LD_LIBRARY_PATH"] {
        assert_refused(
            &gw,
            &agent,
            "envs",
            json!({"argv": ["uptime"], "env": {var: "/tmp"}}),
            "env",
        );
    }
    let r = result(
        &gw,
        "envs",
        json!({"argv": ["uptime"], "env": {"LC_ALL": "C"}}),
    );
    assert_eq!(r["state"], "succeeded", "{r:#}");
}

#[test]
fn file_dirs_confine_pushes_and_pulls() {
    let drop = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    symlink(outside.path(), drop.path().join("escape")).unwrap();
    let policy = format!(
        "mode = \"deny-all\"\nfile_dirs = [{:?}]\n",
        drop.path().display().to_string()
    );
    let (gw, _agent, _dir) = node_with_policy("drop", &policy);
    let push = |path: String| {
        gw.api(
            "PUT",
            &format!("/api/v1/nodes/drop/files?path={path}"),
            Some(json!("x")),
        )
    };
    let (status, out) = push(format!("{}/in.txt", drop.path().display()));
    assert_eq!(status, 200, "{out}");
    assert!(drop.path().join("in.txt").exists());
    for path in [
        format!("{}/escape/out.txt", drop.path().display()),
        format!("{}/../out.txt", drop.path().display()),
        format!("{}/out.txt", outside.path().display()),
    ] {
        let (status, out) = push(path.clone());
        assert_eq!(status, 200, "{path}: {out}");
        assert_eq!(out["results"][0]["state"], "refused", "{path}: {out}");
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    let pull = |path: String| {
        gw.api(
            "GET",
            &format!("/api/v1/nodes/drop/files?path={path}"),
            None,
        )
    };
    let (status, out) = pull(format!("{}/in.txt", drop.path().display()));
    assert_eq!(status, 200, "{out}");
    let (status, out) = pull(format!("{}/escape/secret", drop.path().display()));
    assert_eq!(status, 403, "{out}");
}

#[test]
fn a_bad_policy_on_sighup_keeps_the_old_one() {
    let (gw, agent, dir) = node_with_policy("hup", UPTIME_ONLY);
    let hup = || {
        let pid = agent.proc.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status();
        assert!(sent.unwrap().success());
    };
    std::fs::write(
        dir.path().join("policy.toml"),
        "mode = \"allow-everything\"\n",
    )
    .unwrap();
    hup();
    wait_until(
        Duration::from_secs(10),
        "the failed reload in the log",
        || agent.proc.log_text().contains("policy reload failed"),
    );
    assert_refused(
        &gw,
        &agent,
        "hup",
        json!({"argv": ["/bin/true"]}),
        "allowlist",
    );
    assert_eq!(
        result(&gw, "hup", json!({"argv": ["uptime"]}))["state"],
        "succeeded"
    );
    // A good file then takes effect.
    std::fs::write(dir.path().join("policy.toml"), "mode = \"deny-all\"\n").unwrap();
    hup();
    wait_until(Duration::from_secs(10), "the reload to deny-all", || {
        result(&gw, "hup", json!({"argv": ["uptime"]}))["state"] == "refused"
    });
}

#[test]
fn a_bad_policy_at_start_stops_the_agent_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "mode = \"allowlist\"\n[[rule]]\nprogram = \"/no/such/program\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::util::bin("agent"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["run", "--policy", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy.toml") && stderr.contains("/no/such/program"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A file named with --policy must exist.
    let out = std::process::Command::new(crate::util::bin("agent"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "run",
            "--policy",
            dir.path().join("missing.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
