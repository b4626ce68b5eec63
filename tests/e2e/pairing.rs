//! Joining: auto-approved and manual nodes, CLI and API views, refusals on both sides.

use std::time::Duration;

use serde_json::json;

use crate::util::{agent_join, wait_until, Agent, Gateway};

#[test]
fn two_agents_join_one_auto_one_manual_then_both_run_commands() {
    let gw = Gateway::start();
    let auto = Agent::start(&gw.join(&[]), "pi-auto");
    let manual_join = gw.join(&["--manual"]);
    let manual = Agent::start(&manual_join, "pi-manual");

    gw.wait_status("pi-auto", "online");
    gw.wait_status("pi-manual", "pending");
    let ls = gw.cli(&["nodes", "ls"]);
    let table = String::from_utf8_lossy(&ls.stdout);
    assert!(
        table.contains("pi-manual") && table.contains("pending"),
        "{table}"
    );

    let approve = gw.cli(&["nodes", "approve", "pi-manual"]);
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    gw.wait_status("pi-manual", "online");

    let (status, list) = gw.api("GET", "/api/v1/nodes", None);
    assert_eq!(status, 200);
    let nodes = list["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(n["status"], "online", "{n}");
        assert_eq!(n["capabilities"], json!(["test"]));
        assert!(n["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    }

    for node in ["pi-auto", "pi-manual"] {
        let (status, out) = gw.exec(
            node,
            json!({"command": format!("echo {node}; echo err >&2; exit 3")}),
        );
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["stdout"], format!("{node}\n"));
        assert_eq!(out["stderr"], "err\n");
        assert_eq!(out["exit_code"], 3);
        assert_eq!(out["signal"], json!(null));
        assert_eq!(out["timed_out"], false);
        assert_eq!(out["node"], node);
        assert!(out["job_id"].as_str().is_some_and(|j| !j.is_empty()));
    }

    // The human CLI prints the output and exits with the remote code.
    let out = gw.cli(&["exec", "pi-auto", "echo via-cli; exit 7"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli\n");
    assert_eq!(out.status.code(), Some(7));

    // The status endpoint counts them.
    let (_, status) = gw.api("GET", "/api/v1/status", None);
    assert_eq!(status["nodes"]["online"], 2, "{status}");
    assert_eq!(status["sshd"]["running"], true, "{status}");
    drop((auto, manual));
}

#[test]
fn rejected_node_never_comes_online() {
    let gw = Gateway::start();
    let _agent = Agent::start(&gw.join(&["--manual"]), "pi-reject");
    gw.wait_status("pi-reject", "pending");
    let out = gw.cli(&["nodes", "reject", "pi-reject"]);
    assert!(out.status.success());
    gw.wait_status("pi-reject", "rejected");
    let (status, body) = gw.exec("pi-reject", json!({"command": "true"}));
    assert_eq!(status, 409, "{body}");
}

/// Regression: `agent join burrow1.garbage` created a node key before it rejected the string.
#[test]
fn garbage_join_string_is_refused_before_a_key_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = crate::util::isolate(&mut std::process::Command::new(crate::util::bin("agent")))
        .arg("--data-dir")
        .arg(&data)
        .args(["join", "burrow1.garbage", "--name", "typo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    assert!(!data.join("agent.key").exists(), "a key was left behind");
}

/// The CLI's and the API's wording for what may be asked: roles that exist, and who may do what.
#[test]
fn refusals_name_what_would_be_allowed() {
    let gw = Gateway::start();
    let out = gw.cli(&["token", "create", "--role", "admin"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expected gateway, operator or viewer") && !err.contains("node"),
        "{err}"
    );
    let viewer = gw.token("viewer");
    let (status, body) = gw.api_as(
        &viewer,
        "POST",
        "/api/v1/nodes/x/exec",
        Some(json!({"command": "true"})),
    );
    assert_eq!(status, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("needs operator or gateway; this token is viewer"),
        "{body}"
    );
}

#[test]
fn reused_token_wrong_pin_and_taken_name_are_refused_with_clear_messages() {
    let gw = Gateway::start();
    let join = gw.join(&[]);
    let first = agent_join(&join, "pi-one");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // The single-use token is spent.
    let again = agent_join(&join, "pi-two");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(err.contains("used up"), "{err}");
    wait_until(Duration::from_secs(10), "gateway logs the refusal", || {
        gw.log_text().contains("used up")
    });

    // A join string whose host-key pin is not this sshd's.
    let mut ticket = burrow_core::join::JoinTicket::decode(&gw.join(&[])).unwrap();
    ticket.host_key = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let out = agent_join(&ticket.encode(), "pi-three");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not match the pinned"), "{err}");

    // Another key asking for a name already held.
    let out = agent_join(&gw.join(&[]), "pi-one");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already held by another key"), "{err}");

    // An expired token.
    let short = gw.join(&["--ttl", "1s"]);
    wait_until(Duration::from_secs(10), "token expiry", || {
        let out = agent_join(&short, "pi-late");
        !out.status.success()
    });

    // Garbage join strings fail before any network use.
    let out = agent_join("burrow1.bm90IGpzb24", "x");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid join string"));
}

/// `serve --system-sshd`: no managed sshd; nodes log in through a separate sshd (standing in for the
/// system's, configured with the `gateway install --sshd-snippet` blocks, enrollment user included)
/// whose Ed25519 host key the join string pins, even though that sshd offers an ECDSA host key first.
#[test]
fn system_sshd_mode_pairs_and_runs_commands() {
    use std::process::Command;
    let sys = tempfile::Builder::new()
        .prefix("burrow-syssshd")
        .tempdir()
        .unwrap();
    for (kind, name) in [("ecdsa", "ecdsa"), ("ed25519", "ed25519")] {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(sys.path().join(name))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start_with(&[
        "--system-sshd",
        "--ssh-public",
        &format!("127.0.0.1:{port}"),
        "--host-key",
        sys.path().join("ed25519.pub").to_str().unwrap(),
    ]);
    let (_, status) = gw.api("GET", "/api/v1/status", None);
    assert_eq!(status["sshd"]["mode"], "system", "{status}");
    // The real snippet (`gateway install --sshd-snippet`) after the system's own settings. It refuses
    // to lock root out, but the gateway under test runs as root, so its blocks are retargeted from a
    // stand-in user to root (this sshd serves nobody else).
    let snippet = gw.cli(&[
        "install",
        "--sshd-snippet",
        "--user",
        "burrow-stand-in",
        "--api",
        &gw.api.to_string(),
    ]);
    assert!(
        snippet.status.success(),
        "{}",
        String::from_utf8_lossy(&snippet.stderr)
    );
    let snippet = String::from_utf8(snippet.stdout)
        .unwrap()
        .replace("User burrow-stand-in", "User root")
        .replace(
            "AuthorizedKeysCommandUser burrow-stand-in",
            "AuthorizedKeysCommandUser root",
        );
    let config = sys.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/ecdsa\nHostKey {dir}/ed25519\n\
             PidFile none\nUsePAM no\nStrictModes no\n{snippet}",
            dir = sys.path().display(),
        ),
    )
    .unwrap();
    // sshd needs its privilege-separation dir when run as root (not as another user).
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut sshd = Command::new("/usr/sbin/sshd");
    sshd.arg("-D").arg("-e").arg("-f").arg(&config);
    let _sshd = crate::util::Proc::spawn(sshd, sys.path().join("sshd.log"));

    let _agent = Agent::start(&gw.join(&[]), "via-system");
    gw.wait_status("via-system", "online");
    let (status, out) = gw.exec("via-system", json!({"command": "echo system"}));
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("system\n")),
        "{out}"
    );
}

/// Regression: concurrent pairing requests shared one temp file name for `authorized_keys`, so some
/// got 500 (and their agent exited) after the gateway had already approved them.
#[test]
fn twenty_agents_pair_at_once_with_one_token() {
    let gw = Gateway::start();
    let join = gw.join(&["--uses", "20"]);
    let agents: Vec<Agent> = (0..20)
        .map(|i| Agent::start(&join, &format!("crowd-{i}")))
        .collect();
    wait_until(Duration::from_secs(60), "20 nodes online", || {
        let (_, list) = gw.api("GET", "/api/v1/nodes", None);
        let online = list["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["status"] == "online").count());
        online == 20
    });
    for a in &agents {
        assert!(
            !a.proc.log_text().contains("agent: error"),
            "{}",
            a.proc.log_text()
        );
    }
    let (_, list) = gw.api("GET", "/api/v1/nodes", None);
    assert_eq!(list["nodes"].as_array().unwrap().len(), 20, "{list}");
}

/// Regression: `"10000y"` on a join token was saved (then pairing and `serve` panicked) and `"100y"`
/// on an API token became an `exp` in 1990. Both are refused with a 400, from the API and the CLI.
#[test]
fn absurd_ttls_are_refused_with_400() {
    let gw = Gateway::start();
    let (status, body) = gw.api(
        "POST",
        "/api/v1/join-tokens",
        Some(json!({"ttl": "10000y"})),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("too long"),
        "{body}"
    );
    let (status, body) = gw.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "operator", "ttl": "100y"})),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    for args in [
        &["join", "create", "--ttl", "10000y"][..],
        &["token", "create", "--ttl", "100y"][..],
    ] {
        let out = gw.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("too long"),
            "{args:?}: {err}"
        );
    }
    // The bounds themselves are accepted, and nothing absurd was saved.
    let (status, body) = gw.api("POST", "/api/v1/join-tokens", Some(json!({"ttl": "365d"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = gw.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "viewer", "ttl": "3650d"})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = gw.api_as(
        body["token"].as_str().unwrap(),
        "GET",
        "/api/v1/nodes",
        None,
    );
    assert_eq!(
        status, 200,
        "a 10-year token is valid now, not expired in 1990"
    );
}

/// Regression: a registry already holding a join token that expires in the year 10000+ (saved in
/// `state.json` before TTLs were bounded, now imported into the store) made `serve` panic at start;
/// it now starts, and the token still pairs (cut to the one-year bound).
#[test]
fn a_stored_10000y_join_token_still_serves_and_pairs() {
    let gw = Gateway::start();
    let join = gw.join(&[]);
    let gw = gw.restart_after(|data| {
        let db = rusqlite::Connection::open(data.join("burrow.db")).unwrap();
        let changed = db
            .execute(
                "UPDATE join_tokens SET expires_at = created_at + ?1",
                [10_000i64 * 365 * 86400],
            )
            .unwrap();
        assert_eq!(changed, 1);
    });
    let _agent = Agent::start(&join, "pi-old-state");
    gw.wait_status("pi-old-state", "online");
    assert!(gw.log_text().contains("outlived the 365-day bound"));
}

/// Regression: `/api/v1/agent/hello` kept every server nonce in a table capped at 10,000, so one
/// client calling it in a loop made the gateway refuse every node's pairing for a minute.
#[test]
fn hello_flood_cannot_lock_out_pairing() {
    use base64::Engine;
    let gw = Gateway::start();
    let url = gw.url("/api/v1/agent/hello");
    let body =
        json!({"nonce": base64::engine::general_purpose::STANDARD.encode([7u8; 32])}).to_string();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut refused = 0;
                for _ in 0..3_000 {
                    let resp = agent.post(&url).send(&body).unwrap();
                    refused += usize::from(resp.status() != 200);
                    let _ = resp.into_body().read_to_string();
                }
                refused
            })
        })
        .collect();
    let refused: usize = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, 0, "hellos refused during the flood");
    // Well inside the old table's one-minute lifetime: a node still pairs.
    let _agent = Agent::start(&gw.join(&[]), "after-flood");
    gw.wait_status("after-flood", "online");
}

/// Sends a pairing request signed by `key`, straight to the API (as the agent does through sshd).
pub(crate) fn signed_pair(
    gw: &Gateway,
    key: &burrow_core::identity::Identity,
    name: &str,
    secret: Option<&str>,
) -> (u16, serde_json::Value) {
    signed_pair_with(gw, key, name, secret, &[])
}

/// [`signed_pair`] proposing `labels`.
fn signed_pair_with(
    gw: &Gateway,
    key: &burrow_core::identity::Identity,
    name: &str,
    secret: Option<&str>,
    labels: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let client_nonce = [9u8; 32];
    let hello: serde_json::Value = agent
        .post(&gw.url("/api/v1/agent/hello"))
        .send(json!({"nonce": STANDARD.encode(client_nonce)}).to_string())
        .unwrap()
        .into_body()
        .read_to_string()
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let server_nonce = STANDARD
        .decode(hello["server_nonce"].as_str().unwrap())
        .unwrap();
    let request = burrow_core::api::PairRequest {
        name: name.into(),
        public_key: key.public_line(),
        join_secret: secret.map(str::to_string),
        hostname: "probe".into(),
        capabilities: Vec::new(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        os: "linux".into(),
        arch: "x86_64".into(),
        version: "0".into(),
    };
    let text = serde_json::to_string(&request).unwrap();
    let signature = key.sign(&burrow_core::handshake::pair_message(
        &server_nonce,
        text.as_bytes(),
    ));
    let body = json!({"request": text, "server_nonce": STANDARD.encode(&server_nonce),
                      "signature": STANDARD.encode(signature)});
    let resp = agent
        .post(&gw.url("/api/v1/agent/pair"))
        .send(body.to_string())
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// Regression: without a join secret, a pairing request for a taken name got 409 "already held by
/// another key" and one for a free name 401, so anyone reaching the endpoint could list node names.
#[test]
fn unauthenticated_pairing_does_not_reveal_whether_a_name_exists() {
    let gw = Gateway::start();
    let out = agent_join(&gw.join(&[]), "taken");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stranger = burrow_core::identity::Identity::generate("stranger");
    for secret in [None, Some("not-a-join-secret")] {
        let taken = signed_pair(&gw, &stranger, "taken", secret);
        let free = signed_pair(&gw, &stranger, "free", secret);
        assert!(taken.0 == 401 || taken.0 == 403, "{taken:?}");
        assert_eq!(
            taken, free,
            "same answer for a taken and a free name ({secret:?})"
        );
    }
    // A valid join secret still learns why its name is refused, without spending a use.
    let join = gw.join(&[]);
    let out = agent_join(&join, "taken");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already held by another key"));
    let out = agent_join(&join, "another");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Salt's grains trap: a node that could set its own labels would receive what is pushed to the
/// group it claims. Labels are fixed when the node is approved; asking again with other labels
/// changes nothing; an operator can change them (audited) and targeting follows.
#[test]
fn a_node_cannot_change_its_labels_after_approval_an_operator_can() {
    let gw = Gateway::start();
    let secret = burrow_core::join::JoinTicket::decode(&gw.join(&[]))
        .unwrap()
        .secret;
    let key = burrow_core::identity::Identity::generate("labelled");
    let (status, out) = signed_pair_with(&gw, &key, "labelled", Some(&secret), &[("site", "home")]);
    assert_eq!(
        (status, out["status"].as_str()),
        (200, Some("approved")),
        "{out}"
    );
    let (status, out) = signed_pair_with(&gw, &key, "labelled", None, &[("site", "vault")]);
    assert_eq!(status, 200, "{out}");
    assert_eq!(gw.node("labelled")["labels"], json!({"site": "home"}));
    let targets = |sel: &str| {
        let (status, out) = gw.api(
            "POST",
            "/api/v1/exec",
            Some(json!({"target": sel, "command": "true", "async": true})),
        );
        (status, out["nodes"].clone())
    };
    assert_eq!(targets("label:site=home"), (202, json!(["labelled"])));
    assert_eq!(targets("label:site=vault").0, 404);
    let operator = gw.token("operator");
    let (status, out) = gw.api_as(
        &operator,
        "PATCH",
        "/api/v1/nodes/labelled",
        Some(json!({"labels": {"site": "vault", "rack": "2"}, "capabilities": ["gpu"]})),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["labels"], json!({"site": "vault", "rack": "2"}));
    assert_eq!(targets("label:site=vault"), (202, json!(["labelled"])));
    assert_eq!(targets("label:site=home").0, 404);
    assert_eq!(targets("cap:gpu,label:rack=2"), (202, json!(["labelled"])));
    let (_, listed) = gw.api("GET", "/api/v1/nodes?label=rack=2&capability=gpu", None);
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 1, "{listed}");
    let (_, none) = gw.api("GET", "/api/v1/nodes?label=rack=3", None);
    assert_eq!(none["nodes"], json!([]));
    let (status, _) = gw.api("GET", "/api/v1/nodes?status=sideways", None);
    assert_eq!(status, 400);
    let (status, out) = gw.api_as(
        &operator,
        "PATCH",
        "/api/v1/nodes/labelled",
        Some(json!({"labels": {"rack": null}})),
    );
    assert_eq!(
        (status, out["labels"].clone()),
        (200, json!({"site": "vault"}))
    );
    // The same through the CLI (its Unix user is the actor).
    let out = gw.cli(&["nodes", "label", "labelled", "zone=1", "site="]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.node("labelled")["labels"], json!({"zone": "1"}));
    let out = gw.cli(&["nodes", "label", "labelled", "nokey"]);
    assert!(!out.status.success());
    let viewer = gw.token("viewer");
    let (status, _) = gw.api_as(
        &viewer,
        "PATCH",
        "/api/v1/nodes/labelled",
        Some(json!({"labels": {"a": "b"}})),
    );
    assert_eq!(status, 403);
    let (status, _) = gw.api_as(
        &operator,
        "PATCH",
        "/api/v1/nodes/labelled",
        Some(json!({"labels": {"bad key": "b"}})),
    );
    assert_eq!(status, 400);
    // The audit writer appends in the background: wait for both entries.
    crate::util::wait_until(
        Duration::from_secs(5),
        "three node.label audit entries",
        || {
            let audit = std::fs::read_to_string(gw.data().join("audit.log")).unwrap_or_default();
            audit.matches("\"node.label\"").count() == 3
        },
    );
}
