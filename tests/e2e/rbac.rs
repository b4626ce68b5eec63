//! The RBAC matrix (issue 9): every route of the API × every kind of caller, against a real gateway
//! with one real node, asserting the exact status of each cell.
//!
//! The expected statuses are written here by hand, not derived from the gateway's route table (that
//! would only test the table against itself); `the_matrix_lists_every_route_of_the_table` fails when
//! the table has a route this file does not list, so a new route cannot skip the matrix.
//!
//! Callers, in column order: no `Authorization` header; a garbage token; a token signed by the gateway's
//! own key but expired; one signed by another key; `alg: none`; HS256 keyed with the gateway's public key
//! (the classic algorithm confusion); a revoked operator token; the node's own token from pairing (a
//! node key holder); viewer; operator; gateway.
//!
//! Authorised callers get the handler's own answer, so each row picks a request whose answer says the
//! handler ran: 200 on reads of the real node and job, 201 on mints, 404 on an unknown id where the
//! route changes state (revoking the node would end the test), 400 where the body is deliberately empty.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use burrow_core::identity::Identity;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::util::{online_node, Gateway};

/// The columns of the matrix.
const CALLERS: [&str; 11] = [
    "no token",
    "garbage",
    "expired",
    "wrong key",
    "alg none",
    "HS256 with the public key",
    "revoked",
    "node",
    "viewer",
    "operator",
    "gateway",
];

/// One row: a route of the table, a concrete request to it, and the status each caller gets.
struct Row {
    method: &'static str,
    pattern: &'static str,
    /// `{job}` is replaced by the id of a finished job on the node `pi-1`.
    path: &'static str,
    body: Option<&'static str>,
    want: [u16; 11],
}

/// Every caller gets the same answer: the route takes no token.
const fn public(status: u16) -> [u16; 11] {
    [status; 11]
}

/// Bad tokens 401; the node's token 403 (valid, but a node uses no route); then viewer, operator,
/// gateway.
const fn guarded(viewer: u16, operator: u16, gateway: u16) -> [u16; 11] {
    [
        401, 401, 401, 401, 401, 401, 401, 403, viewer, operator, gateway,
    ]
}

const ROWS: &[Row] = &[
    Row {
        method: "GET",
        pattern: "/healthz",
        path: "/healthz",
        body: None,
        want: public(200),
    },
    // Pairing proves the caller by a signed request, not a token: an empty body is refused by the
    // handler whatever the headers say.
    Row {
        method: "POST",
        pattern: "/api/v1/agent/hello",
        path: "/api/v1/agent/hello",
        body: Some(""),
        want: public(400),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/agent/pair",
        path: "/api/v1/agent/pair",
        body: Some(""),
        want: public(400),
    },
    // The API's description holds no secret: served to anyone, whatever token comes with it.
    Row {
        method: "GET",
        pattern: "/api/v1/openapi.json",
        path: "/api/v1/openapi.json",
        body: None,
        want: public(200),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/status",
        path: "/api/v1/status",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "GET",
        pattern: "/metrics",
        path: "/metrics",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/nodes",
        path: "/api/v1/nodes",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/nodes/{id}",
        path: "/api/v1/nodes/pi-1",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/metrics",
        path: "/api/v1/nodes/pi-1/metrics",
        body: None,
        want: guarded(200, 200, 200),
    },
    // Without `Upgrade: burrow-stream` an allowed caller is told how (400); services.rs streams.
    Row {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/services/{name}/connect",
        path: "/api/v1/nodes/pi-1/services/ssh/connect",
        body: None,
        want: guarded(403, 400, 400),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/history",
        path: "/api/v1/nodes/pi-1/history",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/alerts",
        path: "/api/v1/alerts",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "PATCH",
        pattern: "/api/v1/nodes/{id}",
        path: "/api/v1/nodes/ghost",
        body: Some(r#"{"labels":{"room":"attic"}}"#),
        want: guarded(403, 404, 404),
    },
    Row {
        method: "DELETE",
        pattern: "/api/v1/nodes/{id}",
        path: "/api/v1/nodes/ghost",
        body: None,
        want: guarded(403, 403, 404),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/approve",
        path: "/api/v1/nodes/ghost/approve",
        body: Some("{}"),
        want: guarded(403, 403, 404),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/reject",
        path: "/api/v1/nodes/ghost/reject",
        body: Some("{}"),
        want: guarded(403, 403, 404),
    },
    // The two exec forms run `true` on the real node: what a bad token must never reach.
    Row {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/exec",
        path: "/api/v1/nodes/pi-1/exec",
        body: Some(r#"{"argv":["true"]}"#),
        want: guarded(403, 200, 200),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/exec",
        path: "/api/v1/exec",
        body: Some(r#"{"target":"pi-1","argv":["true"]}"#),
        want: guarded(403, 200, 200),
    },
    Row {
        method: "PUT",
        pattern: "/api/v1/nodes/{id}/files",
        path: "/api/v1/nodes/ghost/files?path=/tmp/burrow-rbac",
        body: Some("x"),
        want: guarded(403, 404, 404),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/files",
        path: "/api/v1/nodes/ghost/files?path=/etc/hostname",
        body: None,
        want: guarded(403, 404, 404),
    },
    // No target: refused by the handler before anything is sent.
    Row {
        method: "PUT",
        pattern: "/api/v1/files",
        path: "/api/v1/files?path=/tmp/burrow-rbac",
        body: Some("x"),
        want: guarded(403, 400, 400),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/jobs",
        path: "/api/v1/jobs",
        body: None,
        want: guarded(200, 200, 200),
    },
    // A viewer reads a job (without its output, see `a_viewer_sees_how_a_job_ended_but_not_its_output`)
    // but not its output stream.
    Row {
        method: "GET",
        pattern: "/api/v1/jobs/{id}",
        path: "/api/v1/jobs/{job}",
        body: None,
        want: guarded(200, 200, 200),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/jobs/{id}/stream",
        path: "/api/v1/jobs/{job}/stream",
        body: None,
        want: guarded(403, 200, 200),
    },
    // The job has ended: its stdin is a conflict; a cancel answers the job as it ended.
    Row {
        method: "PUT",
        pattern: "/api/v1/jobs/{id}/stdin",
        path: "/api/v1/jobs/{job}/stdin",
        body: Some("x"),
        want: guarded(403, 409, 409),
    },
    // The job has no terminal: a conflict for those allowed to ask.
    Row {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/resize",
        path: "/api/v1/jobs/{job}/resize",
        body: Some(r#"{"rows":30,"cols":100}"#),
        want: guarded(403, 409, 409),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/signal",
        path: "/api/v1/jobs/{job}/signal",
        body: Some(r#"{"signal":"INT"}"#),
        want: guarded(403, 409, 409),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/cancel",
        path: "/api/v1/jobs/{job}/cancel",
        body: Some("{}"),
        want: guarded(403, 200, 200),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/join-tokens",
        path: "/api/v1/join-tokens",
        body: Some(r#"{"ttl":"10m"}"#),
        want: guarded(403, 403, 201),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/join-tokens",
        path: "/api/v1/join-tokens",
        body: None,
        want: guarded(403, 403, 200),
    },
    Row {
        method: "DELETE",
        pattern: "/api/v1/join-tokens/{id}",
        path: "/api/v1/join-tokens/ghost",
        body: None,
        want: guarded(403, 403, 404),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/audit",
        path: "/api/v1/audit?limit=1",
        body: None,
        want: guarded(403, 403, 200),
    },
    Row {
        method: "POST",
        pattern: "/api/v1/tokens",
        path: "/api/v1/tokens",
        body: Some(r#"{"role":"viewer","ttl":"1h","name":"rbac"}"#),
        want: guarded(403, 403, 201),
    },
    Row {
        method: "GET",
        pattern: "/api/v1/tokens",
        path: "/api/v1/tokens",
        body: None,
        want: guarded(403, 403, 200),
    },
    Row {
        method: "DELETE",
        pattern: "/api/v1/tokens/{jti}",
        path: "/api/v1/tokens/ghost",
        body: None,
        want: guarded(403, 403, 404),
    },
];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A JWT with `header` and `claims`, signed over `header.claims` by `sign`.
fn forge(header: Value, claims: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// Claims as the gateway writes them, for `role`, expiring at `exp`.
fn claims(role: &str, exp: u64) -> Value {
    let now = now();
    json!({"iat": now.min(exp), "nbf": now.min(exp), "exp": exp, "sub": "forger",
           "jti": "00112233445566778899aabb", "role": role})
}

fn eddsa(key: &Identity, claims: Value) -> String {
    forge(json!({"alg": "EdDSA", "typ": "JWT"}), claims, |m| {
        key.sign(m).to_vec()
    })
}

fn hs256(secret: &[u8], claims: Value) -> String {
    forge(json!({"alg": "HS256", "typ": "JWT"}), claims, |m| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(m);
        mac.finalize().into_bytes().to_vec()
    })
}

/// Sends one request with `token` (none: no `Authorization` header); returns its status and body.
fn call(
    gw: &Gateway,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let url = gw.url(path);
    let auth = token.map(|t| format!("Bearer {t}"));
    macro_rules! with_auth {
        ($req:expr) => {{
            let req = $req;
            match &auth {
                Some(a) => req.header("Authorization", a),
                None => req,
            }
        }};
    }
    let resp = match (method, body) {
        ("GET", _) => with_auth!(agent.get(&url)).call(),
        ("DELETE", _) => with_auth!(agent.delete(&url)).call(),
        ("PUT", b) => with_auth!(agent.put(&url)).send(b.unwrap_or("")),
        ("PATCH", b) => with_auth!(agent.patch(&url)).send(b.unwrap_or("")),
        (_, b) => with_auth!(agent.post(&url)).send(b.unwrap_or("")),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body().read_to_string().unwrap_or_default(),
    )
}

/// The token of each column, in [`CALLERS`] order.
fn tokens(gw: &Gateway, node_token: String) -> Vec<Option<String>> {
    let key = Identity::load(&gw.data().join("gateway.key")).unwrap();
    let stranger = Identity::generate("stranger");
    let later = now() + 3600;

    // A forged token is only worth refusing if the same forgery with valid claims would pass: check the
    // recipe against the real key first, so the `expired` column fails for its expiry alone.
    let control = eddsa(&key, claims("viewer", later));
    assert_eq!(
        call(gw, Some(&control), "GET", "/api/v1/nodes", None).0,
        200,
        "a token forged with the gateway's own key and valid claims must pass"
    );

    let (status, minted) = gw.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "operator", "ttl": "1h", "name": "to-revoke"})),
    );
    assert_eq!(status, 201, "{minted}");
    let revoked = minted["token"].as_str().unwrap().to_string();
    let (status, body) = gw.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", minted["jti"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 200, "{body}");

    vec![
        None,
        Some("garbage".into()),
        // Past the gateway's 30 s clock tolerance.
        Some(eddsa(&key, claims("gateway", now() - 3600))),
        Some(eddsa(&stranger, claims("gateway", later))),
        Some(format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims("gateway", later))
        )),
        Some(hs256(key.public().as_bytes(), claims("gateway", later))),
        Some(revoked),
        Some(node_token),
        Some(gw.token("viewer")),
        Some(gw.token("operator")),
        Some(gw.token("gateway")),
    ]
}

/// The node's own bearer token, as pairing gave it to the agent.
fn node_token(agent: &crate::util::Agent) -> String {
    let state: Value =
        serde_json::from_slice(&std::fs::read(agent.dir.path().join("data/agent.json")).unwrap())
            .unwrap();
    state["token"]
        .as_str()
        .expect("the paired agent holds a token")
        .to_string()
}

#[test]
fn every_route_answers_every_caller_as_the_matrix_says() {
    let (gw, agent) = online_node("pi-1");
    let (status, done) = gw.exec("pi-1", json!({"argv": ["echo", "done"]}));
    assert_eq!(status, 200, "{done}");
    let job = done["job_id"].as_str().unwrap().to_string();
    let tokens = tokens(&gw, node_token(&agent));

    let mut wrong = Vec::new();
    for row in ROWS {
        let path = row.path.replace("{job}", &job);
        for (i, token) in tokens.iter().enumerate() {
            let (status, body) = call(&gw, token.as_deref(), row.method, &path, row.body);
            if status != row.want[i] {
                wrong.push(format!(
                    "{} {} as {}: {status}, expected {}: {}",
                    row.method,
                    path,
                    CALLERS[i],
                    row.want[i],
                    body.chars().take(200).collect::<String>()
                ));
            }
            // Every refusal is the one error shape.
            if status >= 400 {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{} {path}: not JSON: {body}", row.method));
                assert!(v["error"].is_string(), "{} {path}: {body}", row.method);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Nothing a refused caller sent ran: only the operator's and the gateway's two execs each (and
    // the setup's echo) became jobs.
    let (_, jobs) = gw.api("GET", "/api/v1/jobs?limit=1000", None);
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1 + 2 * 2, "{jobs}");
}

#[test]
fn the_matrix_lists_every_route_of_the_table() {
    let listed: Vec<(&str, &str)> = ROWS.iter().map(|r| (r.method, r.pattern)).collect();
    let table: Vec<(&str, &str)> = burrow_gateway::routes().collect();
    let missing: Vec<_> = table.iter().filter(|r| !listed.contains(r)).collect();
    let stale: Vec<_> = listed.iter().filter(|r| !table.contains(r)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes without a row in the matrix: {missing:?}; rows for no route: {stale:?}"
    );
    // Each row's request reaches its own route.
    for row in ROWS {
        let path = row.path.split('?').next().unwrap().replace("{job}", "j");
        let segments = path.split('/').count();
        assert_eq!(segments, row.pattern.split('/').count(), "{}", row.path);
    }
}

#[test]
fn hs256_keyed_with_any_form_of_the_public_key_is_refused() {
    let gw = Gateway::start();
    let key = Identity::load(&gw.data().join("gateway.key")).unwrap();
    let public = key.public();
    let forms: [Vec<u8>; 3] = [
        public.as_bytes().to_vec(),
        public.to_base64().into_bytes(),
        public.openssh().into_bytes(),
    ];
    for secret in forms {
        let token = hs256(&secret, claims("gateway", now() + 3600));
        let (status, body) = call(&gw, Some(&token), "GET", "/api/v1/tokens", None);
        assert_eq!(status, 401, "{body}");
    }
    // And the standard base64 of the raw key, the other common spelling.
    let token = hs256(
        STANDARD.encode(public.as_bytes()).as_bytes(),
        claims("gateway", now() + 3600),
    );
    assert_eq!(
        call(&gw, Some(&token), "GET", "/api/v1/tokens", None).0,
        401
    );
}

#[test]
fn a_viewer_sees_how_a_job_ended_but_not_its_output() {
    let (gw, _agent) = online_node("pi-1");
    let (status, done) = gw.exec(
        "pi-1",
        // The output differs from the command text, which a viewer does see.
        json!({"command": "printf hunter%d 2; printf o%s ops >&2; exit 3"}),
    );
    assert_eq!(status, 200, "{done}");
    let id = done["job_id"].as_str().unwrap();
    let path = format!("/api/v1/jobs/{id}");

    let (status, full) = gw.api_as(&gw.token("operator"), "GET", &path, None);
    assert_eq!(status, 200, "{full}");
    assert_eq!(full["results"][0]["stdout"], "hunter2", "{full}");

    let viewer = gw.token("viewer");
    let (status, seen) = gw.api_as(&viewer, "GET", &path, None);
    assert_eq!(status, 200, "{seen}");
    let text = seen.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("oops"),
        "{seen}"
    );
    let result = &seen["results"][0];
    assert_eq!(result["exit_code"], 3, "{seen}");
    assert_eq!(result["state"], "failed", "{seen}");
    assert_eq!(
        result["output_bytes"],
        json!({"stdout": 7, "stderr": 4}),
        "{seen}"
    );
    assert!(
        seen["output"].as_str().unwrap().contains("operator"),
        "{seen}"
    );

    let (status, body) = call(&gw, Some(&viewer), "GET", &format!("{path}/stream"), None);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("needs operator or gateway; this token is viewer"),
        "{body}"
    );
}
