//! Node health with real agents and a real sshd (issue 8): a stopped, frozen or cut-off agent is
//! `offline` within the dead-link bound (20 s) and comes back by itself; a threshold forced low
//! fires exactly one alert, limits the node and resolves once (SIGHUP reloads, links stay up); the
//! last metrics and `last_seen` survive a gateway crash; a node held to 5 % of a CPU by a cgroup
//! makes no state change in 3 minutes.
//!
//! The network cut needs root and network namespaces, the cgroup test a CPU controller: each says
//! why when it skips. Agent side: the cut test's check that the agent drops its dead session
//! within the bound needs the agent's own 20 s bound (the agent branch of issue 8).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{bin, online_node, wait_until, Agent, Gateway, Proc};

/// The gateway's default dead-link bound (`serve --dead-after`).
const BOUND: Duration = Duration::from_secs(20);
/// A probe tick, the status poll and a slow CI machine.
const SLACK: Duration = Duration::from_secs(4);

fn status(gw: &Gateway, id: &str) -> String {
    gw.node(id)["status"].as_str().unwrap_or("?").to_string()
}

/// Waits for `want` and returns how long it took.
fn time_until(gw: &Gateway, id: &str, want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    wait_until(limit, &format!("{id} {want}"), || status(gw, id) == want);
    t.elapsed()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The node's recorded state changes (newest first) as `to` names.
fn changes(gw: &Gateway, id: &str) -> Vec<String> {
    let (code, v) = gw.api(
        "GET",
        &format!("/api/v1/nodes/{id}/history?limit=1000"),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn stopping_an_agent_is_offline_at_once_and_a_restart_brings_it_back() {
    let (gw, mut agent) = online_node("stopper");
    agent.proc.terminate();
    let took = time_until(&gw, "stopper", "offline", BOUND + SLACK);
    eprintln!("stopped agent offline after {took:?}");
    let node = gw.node("stopper");
    assert!(
        node["state_reason"]
            .as_str()
            .unwrap_or("")
            .contains("link lost"),
        "{node}"
    );
    agent.restart();
    let took = time_until(&gw, "stopper", "online", Duration::from_secs(30));
    eprintln!("restarted agent online after {took:?}");
    // Each change recorded once: online, offline, online (newest first).
    wait_until(Duration::from_secs(5), "three recorded changes", || {
        changes(&gw, "stopper").len() >= 3
    });
    assert_eq!(
        changes(&gw, "stopper")[..3],
        ["online", "offline", "online"]
    );
}

#[test]
fn a_frozen_agent_is_offline_within_the_dead_link_bound_and_back_after_sigcont() {
    let (gw, agent) = online_node("frozen");
    let pid = agent.proc.child.id();
    signal(pid, "-STOP");
    let took = time_until(&gw, "frozen", "offline", BOUND + SLACK);
    eprintln!("SIGSTOPped agent offline after {took:?} (bound {BOUND:?})");
    assert!(
        gw.log_text().contains("no answer for"),
        "the probe dropped it"
    );
    signal(pid, "-CONT");
    let took = time_until(&gw, "frozen", "online", Duration::from_secs(10));
    eprintln!("SIGCONTed agent online after {took:?}");
}

/// A network namespace with a veth pair to the host (`10.231.N.1` host side, `.2` inside), deleted
/// on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

impl Netns {
    /// `Err` says why namespaces cannot be made here (not root, `ip netns add` refused).
    fn create() -> Result<Netns, String> {
        let out = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&out.stdout).trim() != "0" {
            return Err("not root".into());
        }
        let tag = std::process::id() % 100_000;
        let net = 1 + std::process::id() % 250;
        let ns = Netns {
            name: format!("burrow{tag}"),
            host_if: format!("bwh{tag}"),
            host_ip: format!("10.231.{net}.1"),
        };
        let inner_if = format!("bwn{tag}");
        ip(&["netns", "add", &ns.name])?;
        let inner_ip = format!("10.231.{net}.2/30");
        let host_cidr = format!("{}/30", ns.host_ip);
        let steps: [&[&str]; 7] = [
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &inner_if,
            ],
            &["link", "set", &inner_if, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.host_if],
            &["link", "set", &ns.host_if, "up"],
            &["-n", &ns.name, "addr", "add", &inner_ip, "dev", &inner_if],
            &["-n", &ns.name, "link", "set", &inner_if, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(ns)
    }

    fn set_host_link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).unwrap();
    }

    /// Established TCP connections from inside the namespace to `to`.
    fn established_to(&self, to: SocketAddr) -> usize {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == to.to_string()))
            .count()
    }

    /// `agent run` inside the namespace.
    fn agent(&self, join: &str, name: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("burrow-agent")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(bin("agent"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--log", "debug", "run", "--join", join, "--name", name]);
        let log = dir.path().join("agent.log");
        Agent {
            proc: Proc::spawn(cmd, log),
            dir,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Needs the agent branch of issue 8 for the agent-side half (the agent's own 20 s bound; before
/// it, the agent keeps a dead session for 90 s).
#[test]
fn a_network_cut_is_found_on_both_sides_within_the_bound_and_healed_within_5_s() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped: cannot make a network namespace here ({why})");
            return;
        }
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ssh: SocketAddr = format!("{}:0", ns.host_ip).parse().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("burrow-gw")
        .tempdir()
        .unwrap();
    let gw = Gateway::start_in(dir, any, ssh, Vec::new());
    let _agent = ns.agent(&gw.join(&[]), "faraway");
    gw.wait_status("faraway", "online");
    assert_eq!(
        ns.established_to(gw.ssh),
        1,
        "one SSH session to the gateway"
    );

    ns.set_host_link(false);
    let cut = Instant::now();
    let took = time_until(&gw, "faraway", "offline", BOUND + SLACK);
    eprintln!("gateway found the cut after {took:?}");
    // The agent side: its session to sshd is given up (it then redials, in vain until restored).
    let left = (cut + BOUND + SLACK).saturating_duration_since(Instant::now());
    wait_until(left, "the agent to drop its session", || {
        ns.established_to(gw.ssh) == 0
    });
    eprintln!("agent dropped its session after {:?}", cut.elapsed());

    ns.set_host_link(true);
    let took = time_until(&gw, "faraway", "online", Duration::from_secs(5));
    eprintln!("online again {took:?} after the network came back");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn alerts(gw: &Gateway, query: &str) -> Vec<Value> {
    let (code, v) = gw.api("GET", &format!("/api/v1/alerts{query}"), None);
    assert_eq!(code, 200, "{v}");
    v["alerts"].as_array().unwrap().clone()
}

fn hook_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_threshold_forced_low_fires_one_alert_limits_the_node_and_resolves_once() {
    let files = tempfile::tempdir().unwrap();
    let rules = files.path().join("alerts.toml");
    let got = files.path().join("hook.jsonl");
    let hook = format!(
        "[hook]\ncommand = \"cat >> {}\"\ntimeout = \"5s\"\n",
        got.display()
    );
    // The normal rules: the built-in ones (a file with only a hook keeps them), and the hook.
    write(&rules, &hook);
    let gw = Gateway::start_with(&["--alert-rules", rules.to_str().unwrap()]);
    let agent = Agent::start(&gw.join(&[]), "hot");
    gw.wait_status("hot", "online");
    wait_until(Duration::from_secs(10), "the first heartbeat", || {
        gw.node("hot")["metrics"]["mem_total"].as_u64().unwrap_or(0) > 0
    });
    let linked_since = gw.node("hot")["online_since"].clone();

    // Any memory in use is over 0.001 %.
    let forced = format!(
        "[[rule]]\nname = \"memory_high\"\nmetric = \"memory\"\nthreshold = 0.001\nfor = \"0s\"\n\
         severity = \"critical\"\n{hook}"
    );
    write(&rules, &forced);
    signal(gw.proc.child.id(), "-HUP");
    time_until(&gw, "hot", "limited", Duration::from_secs(10));
    let reason = gw.node("hot")["state_reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("memory") && reason.contains("threshold"),
        "{reason}"
    );
    wait_until(Duration::from_secs(5), "the stored alert", || {
        alerts(&gw, "?state=firing").len() == 1
    });
    let firing = &alerts(&gw, "?state=firing")[0];
    assert_eq!(
        (
            firing["rule"].as_str(),
            firing["node"].as_str(),
            firing["severity"].as_str()
        ),
        (Some("memory_high"), Some("hot"), Some("critical"))
    );
    wait_until(Duration::from_secs(10), "the hook's fire", || {
        !hook_lines(&got).is_empty()
    });

    // A bad file on reload keeps the rules in force.
    write(&rules, "[[rule]]\nname = \"x\"\n");
    signal(gw.proc.child.id(), "-HUP");
    wait_until(
        Duration::from_secs(5),
        "the log to say it kept the rules",
        || gw.log_text().contains("keeping the alert rules in force"),
    );
    assert_eq!(status(&gw, "hot"), "limited");

    // Back to the normal rules: resolves once.
    write(&rules, &hook);
    signal(gw.proc.child.id(), "-HUP");
    time_until(&gw, "hot", "online", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "the hook's resolve", || {
        hook_lines(&got).len() >= 2
    });
    assert!(alerts(&gw, "?state=firing").is_empty());
    let resolved = alerts(&gw, "?state=resolved");
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["id"], firing["id"]);
    // Some more ticks, to see that nothing fires or resolves again.
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet_until {
        assert_eq!(hook_lines(&got).len(), 2);
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = hook_lines(&got);
    let states: Vec<&str> = lines.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"]);
    assert!(lines
        .iter()
        .all(|l| l["id"] == firing["id"] && l["node"] == "hot"));
    let (code, v) = gw.api("GET", "/api/v1/alerts?state=bogus", None);
    assert_eq!(code, 400, "{v}");

    // Three reloads, and the link never dropped.
    assert_eq!(gw.node("hot")["online_since"], linked_since);
    assert!(!changes(&gw, "hot").iter().any(|c| c == "offline"));
    drop(agent);
}

#[test]
fn last_metrics_and_last_seen_survive_a_gateway_crash() {
    let (gw, mut agent) = online_node("keeper");
    wait_until(Duration::from_secs(10), "the first heartbeat", || {
        gw.node("keeper")["metrics"]["mem_total"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    // The history route: the open minute shows at once; bad parameters are clear 400s.
    let (code, v) = gw.api("GET", "/api/v1/nodes/keeper/metrics?since=1h&step=5m", None);
    assert_eq!(code, 200, "{v}");
    assert!(!v["samples"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["samples"][0]["metrics"]["mem_total"].as_u64().unwrap() > 0);
    for bad in [
        "?since=yesterday",
        "?step=1s",
        "?since=0&step=1m",
        "?colour=red",
    ] {
        let (code, v) = gw.api("GET", &format!("/api/v1/nodes/keeper/metrics{bad}"), None);
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(v["error"].as_str().is_some(), "{v}");
    }
    let (code, _) = gw.api("GET", "/api/v1/nodes/nobody/metrics", None);
    assert_eq!(code, 404);
    let viewer = gw.token("viewer");
    let (code, _) = gw.api_as(&viewer, "GET", "/api/v1/nodes/keeper/metrics", None);
    assert_eq!(code, 200, "viewers read the history");

    agent.proc.terminate();
    gw.wait_status("keeper", "offline");
    let before = gw.node("keeper");
    assert!(before["last_seen"].is_string(), "{before}");
    // The beat is written lazily: wait for its commit, then crash.
    let seen = humantime::parse_rfc3339(before["last_seen"].as_str().unwrap()).unwrap();
    let seen = seen
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let db = gw.data().join("burrow.db");
    wait_until(Duration::from_secs(5), "the beat in the store", || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT last_seen FROM nodes WHERE id = 'keeper'", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
            == Some(seen)
    });
    let gw = gw.crash_restart();
    let after = gw.node("keeper");
    assert_eq!(after["status"], "offline");
    assert_eq!(after["last_seen"], before["last_seen"]);
    assert_eq!(after["metrics"], before["metrics"]);
}

/// Where a CPU limit can be put on a process: a cgroup v2 with the cpu controller (`cpu.max`), or
/// the v1 cpu controller (`cpu.cfs_quota_us`). Removed on drop.
struct CpuLimit {
    dir: std::path::PathBuf,
}

impl CpuLimit {
    /// 5 % of one CPU: 5 ms in every 100 ms.
    fn five_percent() -> Result<CpuLimit, String> {
        let name = format!("burrow-test-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers =
            std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            std::fs::write(dir.join("cpu.max"), "5000 100000")
                .map_err(|e| format!("cpu.max: {e}"))?;
            return Ok(CpuLimit { dir });
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000")
                .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), "5000"))
                .map_err(|e| format!("cpu.cfs_quota_us: {e}"))?;
            return Ok(CpuLimit { dir });
        }
        Err("no cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)".into())
    }

    fn add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", self.dir.display()))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Its processes are gone by now (the agent is dropped first); then the group can go.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// 3 minutes: it runs beside the other tests (it only waits), not before or after them.
#[test]
fn an_agent_held_to_5_percent_of_a_cpu_for_3_minutes_makes_no_state_change() {
    let limit = match CpuLimit::five_percent() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("skipped: cannot hold the agent to 5 % of a CPU here ({why})");
            return;
        }
    };
    let (gw, agent) = online_node("slowpi");
    if let Err(why) = limit.add(agent.proc.child.id()) {
        eprintln!("skipped: {why}");
        return;
    }
    let cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", agent.proc.child.id())).unwrap();
    assert!(cgroup.contains("burrow-test-"), "{cgroup}");
    wait_until(Duration::from_secs(5), "a recorded online", || {
        changes(&gw, "slowpi").first().map(String::as_str) == Some("online")
    });
    let before = changes(&gw, "slowpi");
    // A command spinning in the same cgroup takes what the agent leaves of its 5 %.
    let (code, v) = gw.exec(
        "slowpi",
        serde_json::json!({"command": "timeout 170 sh -c 'while :; do :; done'", "async": true}),
    );
    assert_eq!(code, 202, "{v}");
    let until = Instant::now() + Duration::from_secs(180);
    while Instant::now() < until {
        assert_eq!(status(&gw, "slowpi"), "online", "{}", gw.node("slowpi"));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(changes(&gw, "slowpi"), before, "no state change");
    let stat = std::fs::read_to_string(limit.dir.join("cpu.stat")).unwrap_or_default();
    let throttled = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "the limit held the node back: {stat}");
    eprintln!("throttled {throttled} times in 3 minutes, no state change");
    let (code, out) = gw.exec("slowpi", serde_json::json!({"command": "echo still"}));
    assert_eq!(
        (code, out["stdout"].as_str()),
        (200, Some("still\n")),
        "{out}"
    );
    drop(agent);
    drop(limit);
}
