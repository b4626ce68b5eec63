//! API token and join token lifecycle (issue 9, points 1-2): minted tokens are recorded and listed
//! (metadata only), a revoked token is refused on its very next request and after a restart, its
//! children stay valid, only `gateway` may mint, list or revoke, and a revoked join token cannot
//! pair (its enrollment key leaves sshd's `enroll_keys`). Also the CLI through `api.sock`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{agent_join, wait_until, Gateway};

/// Mints a token with the admin token; returns the answer (201 asserted).
fn mint(gw: &Gateway, role: &str, name: &str) -> Value {
    let (status, body) = gw.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": role, "ttl": "1h", "name": name})),
    );
    assert_eq!(status, 201, "{body}");
    body
}

fn listed(gw: &Gateway) -> Vec<Value> {
    let (status, body) = gw.api("GET", "/api/v1/tokens", None);
    assert_eq!(status, 200, "{body}");
    body["tokens"].as_array().unwrap().clone()
}

fn find<'a>(tokens: &'a [Value], jti: &str) -> &'a Value {
    tokens
        .iter()
        .find(|t| t["jti"] == jti)
        .unwrap_or_else(|| panic!("{jti} not listed in {tokens:?}"))
}

fn audit_log(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.data().join("audit.log")).unwrap_or_default()
}

#[test]
fn a_revoked_token_is_refused_on_the_next_request_and_after_a_restart() {
    let gw = Gateway::start();
    let minted = mint(&gw, "operator", "ci");
    for key in ["token", "jti", "exp", "name", "role"] {
        assert!(minted[key].is_string(), "{key} missing: {minted}");
    }
    assert_eq!(
        (minted["name"].as_str(), minted["role"].as_str()),
        (Some("ci"), Some("operator"))
    );
    let token = minted["token"].as_str().unwrap().to_string();
    let jti = minted["jti"].as_str().unwrap().to_string();
    assert_eq!(gw.api_as(&token, "GET", "/api/v1/nodes", None).0, 200);

    let (status, body) = gw.api("DELETE", &format!("/api/v1/tokens/{jti}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["state"].as_str(), body["already_revoked"].as_bool()),
        (Some("revoked"), Some(false))
    );
    // The very next request.
    let (status, body) = gw.api_as(&token, "GET", "/api/v1/nodes", None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Twice: 200 again, the first revocation time kept. Unknown: 404 with the error shape.
    let first_at = body_revoked_at(&gw, &jti);
    let (status, again) = gw.api("DELETE", &format!("/api/v1/tokens/{jti}"), None);
    assert_eq!(
        (status, again["already_revoked"].as_bool()),
        (200, Some(true)),
        "{again}"
    );
    assert_eq!(again["revoked_at"], first_at);
    let (status, body) = gw.api("DELETE", "/api/v1/tokens/0123456789abcdef01234567", None);
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("no API token"),
        "{body}"
    );

    // Audited, with who did it.
    wait_until(Duration::from_secs(10), "token.revoke audited", || {
        audit_log(&gw)
            .lines()
            .any(|l| l.contains("\"token.revoke\"") && l.contains(&jti))
    });

    let gw = gw.restart();
    let (status, body) = gw.api_as(&token, "GET", "/api/v1/nodes", None);
    assert_eq!(status, 401, "after a restart: {body}");
    let tokens = listed(&gw);
    assert_eq!(find(&tokens, &jti)["state"], "revoked");
    assert_eq!(find(&tokens, &jti)["revoked_at"], first_at);
}

fn body_revoked_at(gw: &Gateway, jti: &str) -> Value {
    find(&listed(gw), jti)["revoked_at"].clone()
}

#[test]
fn a_revoked_tokens_children_stay_valid_and_name_their_parent() {
    let gw = Gateway::start();
    let parent = mint(&gw, "gateway", "parent");
    let parent_jti = parent["jti"].as_str().unwrap();
    let (status, child) = gw.api_as(
        parent["token"].as_str().unwrap(),
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "viewer", "ttl": "1h", "subject": "child"})),
    );
    assert_eq!(status, 201, "{child}");
    // `subject` is still accepted for `name`.
    assert_eq!(child["name"], "child");
    let listed_child = find(&listed(&gw), child["jti"].as_str().unwrap()).clone();
    let by = listed_child["created_by"].as_str().unwrap();
    assert!(by.contains("parent") && by.contains(parent_jti), "{by}");

    let (status, _) = gw.api("DELETE", &format!("/api/v1/tokens/{parent_jti}"), None);
    assert_eq!(status, 200);
    let child_token = child["token"].as_str().unwrap();
    assert_eq!(gw.api_as(child_token, "GET", "/api/v1/nodes", None).0, 200);
    let parent_token = parent["token"].as_str().unwrap();
    assert_eq!(gw.api_as(parent_token, "GET", "/api/v1/nodes", None).0, 401);
}

#[test]
fn listing_tokens_never_shows_a_token_string_and_lists_newest_first() {
    let gw = Gateway::start();
    let a = mint(&gw, "viewer", "first");
    let b = mint(&gw, "operator", "second");
    let (status, body) = gw.api("GET", "/api/v1/tokens", None);
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    for t in [&a, &b] {
        assert!(!text.contains(t["token"].as_str().unwrap()), "{text}");
    }
    // No JWT of any kind (the admin token the harness minted is listed too).
    assert!(!text.contains("eyJ"), "{text}");
    let tokens = body["tokens"].as_array().unwrap();
    let order: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let (ia, ib) = (
        order.iter().position(|n| *n == "first").unwrap(),
        order.iter().position(|n| *n == "second").unwrap(),
    );
    assert!(ib < ia, "newest first: {order:?}");
    let shown = find(tokens, b["jti"].as_str().unwrap());
    for key in [
        "jti",
        "name",
        "role",
        "created_at",
        "exp",
        "revoked_at",
        "created_by",
        "state",
    ] {
        assert!(shown.get(key).is_some(), "{key} missing: {shown}");
    }
    assert_eq!(shown["state"], "active");
    assert!(shown["revoked_at"].is_null());

    // Join tokens: neither the join string nor its secret is listed.
    let join = gw.join(&["--uses", "2"]);
    let secret = burrow_core::join::JoinTicket::decode(&join).unwrap().secret;
    let (status, body) = gw.api("GET", "/api/v1/join-tokens", None);
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(!text.contains(&join) && !text.contains(&secret), "{text}");
    let listed = &body["join_tokens"][0];
    assert_eq!(
        (listed["uses_left"].as_u64(), listed["state"].as_str()),
        (Some(2), Some("active")),
        "{body}"
    );
}

#[test]
fn a_non_gateway_role_cannot_mint_list_or_revoke_tokens() {
    let gw = Gateway::start();
    let victim = mint(&gw, "viewer", "victim");
    let jti = victim["jti"].as_str().unwrap();
    for role in ["operator", "viewer"] {
        let token = mint(&gw, role, role)["token"].as_str().unwrap().to_string();
        let calls = [
            (
                "POST",
                "/api/v1/tokens".to_string(),
                Some(json!({"role": "viewer"})),
            ),
            ("GET", "/api/v1/tokens".to_string(), None),
            ("DELETE", format!("/api/v1/tokens/{jti}"), None),
            ("GET", "/api/v1/join-tokens".to_string(), None),
            ("DELETE", "/api/v1/join-tokens/abc".to_string(), None),
        ];
        for (method, path, body) in calls {
            let (status, answer) = gw.api_as(&token, method, &path, body);
            assert_eq!(status, 403, "{role} {method} {path}: {answer}");
            let error = answer["error"].as_str().unwrap();
            assert!(
                error.contains("needs gateway") && error.contains(role),
                "{error}"
            );
        }
    }
    // Nothing was revoked by the refused calls.
    assert_eq!(find(&listed(&gw), jti)["state"], "active");
}

#[test]
fn a_revoked_join_token_cannot_pair() {
    let gw = Gateway::start();
    let (status, created) = gw.api("POST", "/api/v1/join-tokens", Some(json!({"uses": 5})));
    assert_eq!(status, 201, "{created}");
    let join = created["join"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let enroll_keys = gw.data().join("sshd/enroll_keys");
    let marker = format!("burrow-enroll:{id}");
    assert!(std::fs::read_to_string(&enroll_keys)
        .unwrap()
        .contains(&marker));

    let (status, body) = gw.api("DELETE", &format!("/api/v1/join-tokens/{id}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["revoked"].as_bool(), body["state"].as_str()),
        (Some(true), Some("revoked"))
    );
    // Gone from sshd before the answer.
    let keys = std::fs::read_to_string(&enroll_keys).unwrap();
    assert!(!keys.contains(&marker), "{keys}");

    let out = agent_join(join, "pi-late");
    assert!(
        !out.status.success(),
        "joined with a revoked token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.node("pi-late"), Value::Null);
    // Straight to the pairing endpoint too (as if the key had still reached it).
    let secret = burrow_core::join::JoinTicket::decode(join).unwrap().secret;
    let key = burrow_core::identity::Identity::generate("pi-late");
    let (status, body) = super::pairing::signed_pair(&gw, &key, "pi-late", Some(&secret));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    let (status, again) = gw.api("DELETE", &format!("/api/v1/join-tokens/{id}"), None);
    assert_eq!(
        (status, again["already_revoked"].as_bool()),
        (200, Some(true)),
        "{again}"
    );
    let (status, body) = gw.api("DELETE", "/api/v1/join-tokens/nosuchtoken", None);
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    wait_until(Duration::from_secs(10), "join.revoke audited", || {
        audit_log(&gw)
            .lines()
            .any(|l| l.contains("\"join.revoke\"") && l.contains(id))
    });
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn cli_token_and_join_ls_and_revoke_work_through_the_socket() {
    let gw = Gateway::start();
    let token = stdout(&gw.cli(&["token", "create", "--role", "viewer", "--name", "grafana"]));
    let token = token.trim();
    assert_eq!(gw.api_as(token, "GET", "/api/v1/nodes", None).0, 200);

    let table = stdout(&gw.cli(&["token", "ls"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["JTI", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"]
    );
    assert!(!table.contains(token), "{table}");
    let json: Value = serde_json::from_str(&stdout(&gw.cli(&["token", "ls", "--json"]))).unwrap();
    let row = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "grafana")
        .unwrap()
        .clone();
    // Minted over the socket: recorded under the Unix user.
    assert!(
        row["created_by"].as_str().unwrap().starts_with("uid:"),
        "{row}"
    );
    let jti = row["jti"].as_str().unwrap();
    let line = table.lines().find(|l| l.contains("grafana")).unwrap();
    assert!(
        line.starts_with(jti) && line.contains("viewer") && line.ends_with("active"),
        "{line}"
    );

    let said = stdout(&gw.cli(&["token", "revoke", jti]));
    assert!(said.contains("revoked token"), "{said}");
    assert_eq!(gw.api_as(token, "GET", "/api/v1/nodes", None).0, 401);
    let table = stdout(&gw.cli(&["token", "ls"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(jti) && l.ends_with("revoked")),
        "{table}"
    );
    let out = gw.cli(&["token", "revoke", "nosuchjti"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no API token"),
        "{err}"
    );

    gw.join(&["--uses", "3"]);
    let table = stdout(&gw.cli(&["join", "ls"]));
    let row = table.lines().nth(1).unwrap();
    let id = row.split_whitespace().next().unwrap().to_string();
    assert!(row.contains("3/3") && row.ends_with("active"), "{table}");
    let said = stdout(&gw.cli(&["join", "revoke", &id]));
    assert!(said.contains("revoked join token"), "{said}");
    let table = stdout(&gw.cli(&["join", "ls"]));
    assert!(
        table.lines().nth(1).unwrap().ends_with("revoked"),
        "{table}"
    );
    let out = gw.cli(&["join", "revoke", "nosuchtoken"]);
    assert!(!out.status.success());

    wait_until(Duration::from_secs(10), "CLI actions audited", || {
        let log = audit_log(&gw);
        ["token.create", "token.revoke", "join.create", "join.revoke"]
            .iter()
            .all(|a| {
                log.lines()
                    .any(|l| l.contains(&format!("\"{a}\"")) && l.contains("uid:"))
            })
    });
}
