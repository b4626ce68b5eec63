//! `/metrics` as Prometheus reads it: `promtool check metrics` accepts what a real gateway with two
//! real agents answers, a real Prometheus server scrapes it with the config of docs/monitoring.md,
//! a removed node's series go, and `--metrics-listen` serves `/metrics` alone without a token.
//! Tests needing `promtool` or `prometheus` (Debian package `prometheus`, installed by .ci/run)
//! skip with a message where they are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{bin, isolate, wait_until, Agent, Gateway, Proc};

/// `name` on the PATH, or `None` with a message saying the test is skipped.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("SKIPPED {test}: `{name}` is not installed (apt-get install prometheus)");
    }
    found
}

/// GET `url` with `token` (if any): status, Content-Type and body.
fn get(url: &str, token: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let media = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, media, resp.into_body().read_to_string().unwrap())
}

/// A gateway with two online agents, `pi-a` and `pi-b`.
fn fleet(extra: &[&str]) -> (Gateway, Agent, Agent) {
    let gw = Gateway::start_with(extra);
    let join = gw.join(&["--uses", "2"]);
    let a = Agent::start(&join, "pi-a");
    let b = Agent::start(&join, "pi-b");
    gw.wait_status("pi-a", "online");
    gw.wait_status("pi-b", "online");
    (gw, a, b)
}

/// Runs `promtool check metrics` on `text`; panics with what it says if it objects.
fn promtool_check(promtool: &Path, text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the answer ({}):\n{}{}\n---- the answer ----\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_metrics_of_a_gateway_with_two_agents_and_a_removed_nodes_series_go() {
    let Some(promtool) = tool("promtool", "promtool_accepts_metrics") else {
        return;
    };
    let (gw, _a, _b) = fleet(&[]);
    // One command, so the exec latency histogram and the finished parts have samples.
    let (code, body) = gw.exec("pi-a", json!({"command": "true"}));
    assert_eq!(code, 200, "{body}");
    let viewer = gw.token("viewer");
    let url = gw.url("/metrics");

    let (status, media, text) = get(&url, Some(&viewer));
    assert_eq!(status, 200, "{text}");
    assert_eq!(media, "text/plain; version=0.0.4; charset=utf-8");
    for want in [
        "burrow_node_up{node=\"pi-a\"} 1",
        "burrow_node_up{node=\"pi-b\"} 1",
        "burrow_node_state{node=\"pi-b\",state=\"online\"} 1",
        "burrow_node_state{node=\"pi-b\",state=\"offline\"} 0",
        "burrow_nodes{state=\"online\"} 2",
        "burrow_job_parts_finished_total{kind=\"exec\",state=\"succeeded\"} 1",
        "burrow_exec_duration_seconds_count 1",
        "burrow_sshd_restarts_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "missing {want:?} in:\n{text}"
        );
    }
    for family in [
        "burrow_node_cpu_usage_ratio",
        "burrow_node_memory_total_bytes",
        "burrow_node_filesystem_size_bytes",
        "burrow_node_heartbeat_age_seconds",
        "burrow_node_agent_resident_memory_bytes",
        "burrow_api_requests_total",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{family}{{node=\"pi-a\""))
                    || (family == "burrow_api_requests_total" && l.starts_with(family))),
            "no {family} sample in:\n{text}"
        );
    }
    // The route pattern, never the raw path.
    assert!(
        text.contains("route=\"/api/v1/nodes/{id}/exec\",status=\"200\"}"),
        "{text}"
    );
    assert!(!text.contains("/api/v1/nodes/pi-a/exec"), "{text}");
    promtool_check(&promtool, &text);

    // No token: refused like every read, with the API's JSON error.
    let (status, _, body) = get(&url, None);
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");

    // A removed node's series are gone from the next scrape.
    let (code, _) = gw.api("DELETE", "/api/v1/nodes/pi-b", None);
    assert_eq!(code, 200);
    let (_, _, after) = get(&url, Some(&viewer));
    assert!(!after.contains("pi-b"), "{after}");
    assert!(after.contains("burrow_node_up{node=\"pi-a\"} 1"), "{after}");
    promtool_check(&promtool, &after);
}

#[test]
fn a_real_prometheus_scrapes_the_gateway_with_the_documented_config() {
    let Some(prometheus) = tool("prometheus", "a_real_prometheus_scrapes_the_gateway") else {
        return;
    };
    let (gw, _a, _b) = fleet(&[]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("burrow.token");
    std::fs::write(&token_file, gw.token("viewer")).unwrap();
    // The scrape config of docs/monitoring.md, with a 1 s interval for the test.
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: burrow\n    \
             honor_labels: true\n    metrics_path: /metrics\n    authorization:\n      \
             credentials_file: {}\n    static_configs:\n      - targets: ['{}']\n",
            token_file.display(),
            gw.api
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let server = Proc::spawn(cmd, dir.path().join("prometheus.log"));
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=burrow_node_up");
    let mut last = String::new();
    wait_until(
        Duration::from_secs(90),
        "Prometheus to have burrow_node_up of both nodes",
        || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let Ok(resp) = agent.get(&query).call() else {
                return false;
            };
            last = resp.into_body().read_to_string().unwrap_or_default();
            let Ok(v) = serde_json::from_str::<Value>(&last) else {
                return false;
            };
            let mut nodes: Vec<String> = v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["value"][1] == "1" && r["metric"]["job"] == "burrow")
                .filter_map(|r| r["metric"]["node"].as_str().map(str::to_string))
                .collect();
            nodes.sort();
            nodes == ["pi-a", "pi-b"]
        },
    );
    assert!(last.contains("\"node\":\"pi-a\""), "{last}");
    // Prometheus saw the target up (the token worked), not merely some answer.
    let (_, _, up) = get(
        &format!("http://127.0.0.1:{port}/api/v1/query?query=up"),
        None,
    );
    assert!(
        up.contains("\"value\":[") && up.contains(",\"1\"]"),
        "{up}\n{}",
        server.log_text()
    );
}

#[test]
fn metrics_listen_serves_only_metrics_without_a_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let gw = Gateway::start_with(&["--metrics-listen", &addr]);
    let (status, media, text) = get(&format!("http://{addr}/metrics"), None);
    assert_eq!(status, 200, "{text}");
    assert!(media.starts_with("text/plain; version=0.0.4"), "{media}");
    assert!(text.contains("# TYPE burrow_node_up gauge"), "{text}");
    // Nothing else is served there, with or without a token.
    let (status, _, body) = get(
        &format!("http://{addr}/api/v1/nodes"),
        Some(&gw.token("gateway")),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("only /metrics"), "{body}");
    assert!(gw.log_text().contains("serving /metrics without a token"));

    // Every interface needs --insecure: the gateway refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let out = isolate(&mut Command::new(bin("gateway")))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"])
        .args(["--metrics-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("every interface") && err.contains("--insecure"),
        "{err}"
    );
}
