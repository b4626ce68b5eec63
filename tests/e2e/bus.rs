//! The command bus end to end: jobs that own themselves, lanes, broadcast, `any:`, cancel, async,
//! the jobs API, restarts and the offline queue, against real agents and a real sshd.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{alive, children, online_node, wait_until, Agent, Gateway};

fn fleet(gw: &Gateway, names: &[&str], extra: &[&str]) -> Vec<Agent> {
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start_with(&gw.join(&[]), n, extra))
        .collect();
    for n in names {
        gw.wait_status(n, "online");
    }
    agents
}

fn submit(gw: &Gateway, body: Value) -> String {
    let (status, out) = gw.api("POST", "/api/v1/exec", Some(body));
    assert_eq!(status, 202, "{out}");
    out["job_id"].as_str().unwrap().to_string()
}

fn job(gw: &Gateway, id: &str) -> Value {
    let (status, out) = gw.api("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{out}");
    out
}

fn wait_job(gw: &Gateway, id: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(limit, &format!("job {id} to end"), || {
        last = job(gw, id);
        !matches!(last["state"].as_str(), Some("queued" | "running"))
    });
    last
}

fn by_node(answer: &Value) -> std::collections::BTreeMap<String, Value> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["node"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn fifty_commands_in_one_lane_land_in_order_and_two_lanes_interleave() {
    let (gw, agent) = online_node("orderly");
    let file = agent.dir.path().join("order");
    let ids: Vec<String> = (0..50)
        .map(|i| {
            submit(
                &gw,
                json!({"target": "orderly", "async": true, "lane": "append",
                       "command": format!("echo {i} >> {}", file.display())}),
            )
        })
        .collect();
    for id in &ids {
        assert_eq!(
            wait_job(&gw, id, Duration::from_secs(60))["state"],
            "succeeded"
        );
    }
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);

    // A slow command in one lane does not hold another lane; in its own lane it would.
    let mixed = agent.dir.path().join("mixed");
    let append = |lane: &str, line: &str, delay: u32| {
        submit(
            &gw,
            json!({"target": "orderly", "async": true, "lane": lane,
                   "command": format!("sleep {delay}; echo {line} >> {}", mixed.display())}),
        )
    };
    let a1 = append("a", "a1", 2);
    let a2 = append("a", "a2", 0);
    let b1 = append("b", "b1", 0);
    for id in [&a1, &a2, &b1] {
        assert_eq!(
            wait_job(&gw, id, Duration::from_secs(30))["state"],
            "succeeded"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&mixed).unwrap(),
        "b1\na1\na2\n",
        "lane b ran beside lane a; a2 waited for a1"
    );
}

#[test]
fn broadcast_reports_every_node_and_a_dead_one_does_not_hold_back_the_others() {
    let gw = Gateway::start();
    let names = ["b-1", "b-2", "b-3", "b-4", "b-5", "b-slow", "b-stopped"];
    let mut agents = fleet(&gw, &names, &["--label", "site=bench"]);
    agents.pop().unwrap().proc.terminate();
    wait_until(Duration::from_secs(20), "b-stopped offline", || {
        gw.node("b-stopped")["status"] == "offline"
    });
    // Streamed: each node's lines come with its id as they happen; the slow one does not hold the rest.
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let started = Instant::now();
    let resp = http
        .post(&gw.url("/api/v1/exec"))
        .header("Authorization", &format!("Bearer {}", gw.token("operator")))
        .header("Accept", "application/x-ndjson")
        .send(
            json!({"target": "label:site=bench", "timeout_s": 4,
                   "command": "[ \"$TEST_NODE\" = b-slow ] && sleep 30; echo hi from $TEST_NODE"})
            .to_string(),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = Vec::new();
    let mut fast_done_at = None;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        events.push(event);
        let exits = events
            .iter()
            .filter(|e: &&Value| e["event"] == "exit" && e["node"] != "b-slow")
            .count();
        if exits == 5 && fast_done_at.is_none() {
            fast_done_at = Some(started.elapsed());
        }
    }
    let fast_done_at = fast_done_at.expect("five fast exits");
    assert!(
        fast_done_at < Duration::from_secs(3),
        "the fast nodes waited for the slow one: {fast_done_at:?}"
    );
    assert_eq!(events[0]["event"], "job");
    let job_id = events[0]["job_id"].as_str().unwrap().to_string();
    assert!(events.iter().all(|e| e["job_id"] == job_id.as_str()));
    for n in ["b-1", "b-2", "b-3", "b-4", "b-5"] {
        assert!(
            events.iter().any(|e| e["event"] == "stdout"
                && e["node"] == n
                && e["data"] == format!("hi from {n}\n")),
            "{n}: {events:?}"
        );
    }
    let stopped = events
        .iter()
        .find(|e| e["node"] == "b-stopped")
        .expect("an event for the stopped node");
    assert_eq!(
        (stopped["event"].as_str(), stopped["state"].as_str()),
        (Some("error"), Some("offline"))
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["summary"]["succeeded"], 5, "{summary}");
    assert_eq!(summary["summary"]["timed_out"], 1, "{summary}");
    assert_eq!(summary["summary"]["offline"], 1, "{summary}");
    assert_eq!(summary["summary"]["failed"], 0, "{summary}");
    assert_eq!(summary["state"], "timed_out");

    // The whole answer and the stored job say the same.
    let stored = job(&gw, &job_id);
    let results = by_node(&stored);
    assert_eq!(results.len(), 7);
    assert_eq!(results["b-slow"]["state"], "timed_out");
    assert_eq!(results["b-stopped"]["state"], "offline");
    assert_eq!(results["b-3"]["stdout"], "hi from b-3\n");
    assert_eq!(results["b-3"]["exit_code"], 0);
    let (status, whole) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": ["b-1", "b-2"], "command": "echo $TEST_NODE"})),
    );
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["state"], "succeeded");
    assert_eq!(by_node(&whole)["b-2"]["stdout"], "b-2\n");
    assert_eq!(whole["summary"]["succeeded"], 2);
    drop(agents);
}

#[test]
fn async_answers_at_once_and_the_jobs_api_finds_the_job() {
    let gw = Gateway::start();
    let _agents = fleet(&gw, &["j-1", "j-2"], &[]);
    let started = Instant::now();
    let id = submit(
        &gw,
        json!({"target": "glob:j-*", "async": true, "command": "sleep 1; echo late"}),
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "not at once"
    );
    let ended = wait_job(&gw, &id, Duration::from_secs(30));
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["command"], "sleep 1; echo late");
    assert_eq!(by_node(&ended)["j-2"]["stdout"], "late\n");
    let other = submit(
        &gw,
        json!({"target": "j-1", "async": true, "command": "false"}),
    );
    assert_eq!(
        wait_job(&gw, &other, Duration::from_secs(30))["state"],
        "failed"
    );
    let (_, list) = gw.api("GET", "/api/v1/jobs?limit=10", None);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![other.as_str(), id.as_str()], "newest first");
    let (_, failed) = gw.api("GET", "/api/v1/jobs?state=failed", None);
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 1);
    let (_, page) = gw.api("GET", &format!("/api/v1/jobs?before={other}"), None);
    assert_eq!(page["jobs"][0]["job_id"], id.as_str());
    for bad in [
        "/api/v1/jobs?state=sleepy",
        "/api/v1/jobs?limit=0",
        "/api/v1/jobs?colour=red",
    ] {
        let (status, out) = gw.api("GET", bad, None);
        assert_eq!(
            (status, out["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, out) = gw.api("GET", "/api/v1/jobs/feedfeed", None);
    assert_eq!(
        (status, out["code"].as_str()),
        (404, Some("not_found")),
        "{out}"
    );
    for bad in [
        json!({"target": "nobody", "command": "true"}),
        json!({"target": "glob:zz-*", "command": "true"}),
        json!({"target": "j-1,cap:x", "command": "true"}),
        json!({"command": "true"}),
    ] {
        let (status, out) = gw.api("POST", "/api/v1/exec", Some(bad.clone()));
        assert!(matches!(status, 400 | 404), "{bad} → {status} {out}");
        assert!(out["error"].is_string(), "{out}");
    }
}

/// `sh -c 'echo $$ > PIDFILE; sleep 100 & sleep 100'` started as a job; returns the job id and the
/// pids of the shell and both sleeps.
fn start_tree(gw: &Gateway, node: &str, pidfile: &std::path::Path) -> (String, Vec<u32>) {
    let id = submit(
        gw,
        json!({"target": node, "async": true, "timeout_s": 300,
               "command": format!("echo $$ > {}; sleep 100 & sleep 100", pidfile.display())}),
    );
    let mut pids = Vec::new();
    wait_until(Duration::from_secs(20), "the command tree to run", || {
        let Some(sh) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            return false;
        };
        let kids = children(sh);
        pids = std::iter::once(sh).chain(kids.iter().copied()).collect();
        kids.len() == 2
    });
    (id, pids)
}

#[test]
fn cancel_kills_the_command_and_its_background_children() {
    let (gw, agent) = online_node("cancelled");
    let (id, pids) = start_tree(&gw, "cancelled", &agent.dir.path().join("tree.pid"));
    // Queued behind it in its lane: cancelling the job must not start this one early, and
    // cancelling this one must mean it never runs.
    let marker = agent.dir.path().join("never");
    let queued = submit(
        &gw,
        json!({"target": "cancelled", "async": true,
               "command": format!("touch {}", marker.display())}),
    );
    let (status, out) = gw.api("POST", &format!("/api/v1/jobs/{queued}/cancel"), None);
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["state"], "cancelled", "{out}");
    let (status, out) = gw.api("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    assert_eq!(status, 200, "{out}");
    wait_until(
        Duration::from_secs(10),
        "the whole tree to be killed",
        || pids.iter().all(|p| !alive(*p)),
    );
    let ended = wait_job(&gw, &id, Duration::from_secs(10));
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(!marker.exists(), "a cancelled queued command ran");
    assert!(gw.log_text().contains(&id));
}

#[test]
fn a_client_that_goes_away_does_not_cancel_and_can_attach_again() {
    let (gw, _agent) = online_node("detach");
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let token = gw.token("operator");
    let resp = http
        .post(&gw.url("/api/v1/exec"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Accept", "application/x-ndjson")
        .send(json!({"target": "detach", "command": "echo one; sleep 2; echo two"}).to_string())
        .unwrap();
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let id = first["job_id"].as_str().unwrap().to_string();
    drop(lines);
    let resp = http
        .get(&gw.url(&format!("/api/v1/jobs/{id}/stream")))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let events: Vec<Value> = BufReader::new(resp.into_body().into_reader())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out: String = events
        .iter()
        .filter(|e| e["event"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "one\ntwo\n", "replay then live: {events:?}");
    assert_eq!(events.last().unwrap()["event"], "summary");
    assert_eq!(events.last().unwrap()["state"], "succeeded");
}

#[test]
fn a_gateway_restart_while_a_command_runs_ends_succeeded_with_its_output() {
    let (gw, _agent) = online_node("survivor");
    let id = submit(
        &gw,
        json!({"target": "survivor", "async": true, "command": "echo before; sleep 5; echo done"}),
    );
    wait_until(Duration::from_secs(10), "the command to start", || {
        job(&gw, &id)["results"][0]["stdout"] == "before\n"
    });
    let gw = gw.restart();
    let ended = wait_job(&gw, &id, Duration::from_secs(40));
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let out = ended["results"][0]["stdout"].as_str().unwrap();
    assert!(out.ends_with("done\n"), "{ended}");
}

#[test]
fn queued_commands_wait_for_an_offline_node_run_once_and_expire() {
    let (gw, mut agent) = online_node("sleeper");
    agent.proc.terminate();
    wait_until(Duration::from_secs(20), "sleeper offline", || {
        gw.node("sleeper")["status"] == "offline"
    });
    let marker = agent.dir.path().join("ran");
    // Without a queue TTL an offline node is reported at once.
    let (status, out) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "sleeper", "command": "true"})),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"][0]["state"], "offline", "{out}");
    let short = submit(
        &gw,
        json!({"target": "sleeper", "async": true, "queue_ttl_s": 1, "lane": "short",
               "command": format!("echo short >> {}", marker.display())}),
    );
    let queued = submit(
        &gw,
        json!({"target": "sleeper", "async": true, "queue_ttl_s": 600,
               "command": format!("echo queued >> {}", marker.display())}),
    );
    assert_eq!(
        wait_job(&gw, &short, Duration::from_secs(10))["state"],
        "expired"
    );
    assert_eq!(job(&gw, &queued)["state"], "queued");
    // The queue survives a kill -9 of the gateway.
    let gw = gw.restart_after(|_| {});
    assert_eq!(job(&gw, &queued)["state"], "queued");
    agent.restart();
    assert_eq!(
        wait_job(&gw, &queued, Duration::from_secs(30))["state"],
        "succeeded"
    );
    let gw = gw.restart();
    gw.wait_status("sleeper", "online");
    assert_eq!(job(&gw, &queued)["state"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "queued\n",
        "ran exactly once"
    );
}

#[test]
fn any_picks_the_least_loaded_capable_node_and_fails_over_before_start() {
    let gw = Gateway::start();
    let mut gpus = fleet(&gw, &["gpu-a", "gpu-b"], &["--capability", "gpu"]);
    let _plain = fleet(&gw, &["plain"], &[]);
    // gpu-a runs two commands, gpu-b one: gpu-b is the least loaded.
    for lane in ["x", "y"] {
        submit(
            &gw,
            json!({"target": "gpu-a", "async": true, "lane": lane, "command": "sleep 20"}),
        );
    }
    submit(
        &gw,
        json!({"target": "gpu-b", "async": true, "lane": "w", "command": "sleep 10"}),
    );
    wait_until(Duration::from_secs(10), "the load to be running", || {
        let (_, l) = gw.api("GET", "/api/v1/jobs?state=running", None);
        l["jobs"].as_array().is_some_and(|j| j.len() == 3)
    });
    let (status, out) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "any:cap:gpu", "lane": "z", "command": "echo $TEST_NODE"})),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["results"].as_array().unwrap().len(),
        1,
        "exactly one node"
    );
    assert_eq!(out["results"][0]["stdout"], "gpu-b\n", "{out}");
    // Queued on gpu-b behind its lane w, gpu-b dies before it starts: gpu-a takes it.
    let id = submit(
        &gw,
        json!({"target": {"any": {"capability": "gpu"}}, "async": true, "lane": "w",
               "command": "echo $TEST_NODE"}),
    );
    assert_eq!(job(&gw, &id)["results"][0]["node"], "gpu-b");
    // Killed outright: a stopping agent would first end its running command, freeing the lane.
    let mut b = gpus.pop().unwrap();
    b.proc.child.kill().unwrap();
    b.proc.child.wait().unwrap();
    let ended = wait_job(&gw, &id, Duration::from_secs(30));
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["results"][0]["stdout"], "gpu-a\n", "{ended}");
}

#[test]
fn a_node_with_a_limit_of_two_runs_at_most_two_at_once() {
    let gw = Gateway::start();
    let agent = Agent::start_with(&gw.join(&[]), "narrow", &["--max-concurrent", "2"]);
    gw.wait_status("narrow", "online");
    let log = agent.dir.path().join("spans");
    let ids: Vec<String> = (0..10)
        .map(|i| {
            submit(
                &gw,
                json!({"target": "narrow", "async": true, "lane": format!("l{i}"),
                       "command": format!("echo +$(date +%s%N) >> {0}; sleep 1; echo -$(date +%s%N) >> {0}",
                                          log.display())}),
            )
        })
        .collect();
    for id in &ids {
        let ended = wait_job(&gw, id, Duration::from_secs(60));
        assert_eq!(
            ended["state"], "succeeded",
            "a busy node queues instead of refusing: {ended}"
        );
    }
    let mut marks: Vec<(u128, i32)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let (sign, t) = l.split_at(1);
            (t.parse().unwrap(), if sign == "+" { 1 } else { -1 })
        })
        .collect();
    // Ends before starts at the same instant: a slot freed is a slot taken.
    marks.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in marks {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "at most the node's limit at once, and that many");
}

#[test]
fn killing_the_gateway_mid_delivery_never_runs_a_command_twice() {
    let (gw, mut agent) = online_node("once");
    agent.proc.terminate();
    wait_until(Duration::from_secs(20), "once offline", || {
        gw.node("once")["status"] == "offline"
    });
    let marks = agent.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let ids: Vec<String> = (0..30)
        .map(|i| {
            submit(
                &gw,
                json!({"target": "once", "async": true, "queue_ttl_s": 600,
                       "lane": format!("l{}", i % 3),
                       "command": format!("echo ran >> {}/{i}; sleep 0.2", marks.display())}),
            )
        })
        .collect();
    agent.restart();
    wait_until(Duration::from_secs(30), "delivery to be under way", || {
        std::fs::read_dir(&marks).unwrap().count() >= 4
    });
    let gw = gw.crash_restart();
    let at_kill = std::fs::read_dir(&marks).unwrap().count();
    assert!(
        at_kill < 30,
        "the kill came after delivery ended: proved nothing"
    );
    let mut states = std::collections::BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let ended = wait_job(&gw, id, Duration::from_secs(90));
        let state = ended["state"].as_str().unwrap().to_string();
        let runs = std::fs::read_to_string(marks.join(i.to_string()))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        assert!(runs <= 1, "command {i} ran {runs} times ({state})");
        if state == "succeeded" {
            assert_eq!(runs, 1, "command {i}");
        }
        *states.entry(state).or_insert(0) += 1;
    }
    eprintln!("after a kill -9 mid-delivery: {states:?}");
    assert_eq!(
        states.get("succeeded"),
        Some(&30),
        "nothing is lost either: {states:?}"
    );
}

/// Regression: once ends the agent holds were committed in the background (so the answer need not
/// wait for the fsync), a job could leave memory before its end was durable, and a `GET
/// /api/v1/jobs/{id}` right after the stream's summary read the stale stored row (`queued`). A job
/// now leaves memory only once its last end is durable; whole answers (run on the waiting worker)
/// and streamed ones are both read back at once here.
#[test]
fn a_job_read_right_after_its_answer_shows_its_end() {
    let (gw, _agent) = online_node("pi-1");
    let token = gw.token("operator");
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for round in 0..20 {
        let streamed = round % 2 == 0;
        let mut request = http
            .post(&gw.url("/api/v1/exec"))
            .header("Authorization", &format!("Bearer {token}"));
        if streamed {
            request = request.header("Accept", "application/x-ndjson");
        }
        let resp = request
            .send(json!({"target": "pi-1", "command": format!("exit {}", round % 3)}).to_string())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.into_body().read_to_string().unwrap();
        let job_id = if streamed {
            let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            first["job_id"].as_str().unwrap().to_string()
        } else {
            let answer: Value = serde_json::from_str(&text).unwrap();
            answer["job_id"].as_str().unwrap().to_string()
        };
        let (status, job) = gw.api("GET", &format!("/api/v1/jobs/{job_id}"), None);
        assert_eq!(status, 200, "{job}");
        let want = if round % 3 == 0 {
            "succeeded"
        } else {
            "failed"
        };
        assert_eq!(job["state"], want, "round {round}: {job}");
        assert_eq!(
            job["results"][0]["exit_code"],
            round % 3,
            "round {round}: {job}"
        );
    }
}
