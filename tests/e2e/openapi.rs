//! `GET /api/v1/openapi.json` from a real gateway: served without a token, valid JSON, every route
//! of a hand-written list (method, path, who may call it) present with the matching security, no
//! route the list lacks, every error answer the one `Error` shape, and real answers carrying what
//! the document requires. schemathesis checks the rest (tests/schemathesis/run.sh).

use std::time::Duration;

use serde_json::Value;

use crate::util::Gateway;

/// Every route, written by hand (not read from the route table): a route added to the table without
/// being added here fails `the_document_lists_every_route_and_no_other`.
const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "public"),
    ("post", "/api/v1/agent/hello", "public"),
    ("post", "/api/v1/agent/pair", "public"),
    ("get", "/api/v1/openapi.json", "public"),
    ("get", "/api/v1/status", "read"),
    ("get", "/metrics", "read"),
    ("get", "/api/v1/nodes", "read"),
    ("get", "/api/v1/nodes/{id}", "read"),
    ("get", "/api/v1/nodes/{id}/metrics", "read"),
    ("post", "/api/v1/nodes/{id}/services/{name}/connect", "exec"),
    ("get", "/api/v1/nodes/{id}/history", "read"),
    ("get", "/api/v1/alerts", "read"),
    ("patch", "/api/v1/nodes/{id}", "exec"),
    ("delete", "/api/v1/nodes/{id}", "admin"),
    ("post", "/api/v1/nodes/{id}/approve", "admin"),
    ("post", "/api/v1/nodes/{id}/reject", "admin"),
    ("post", "/api/v1/nodes/{id}/exec", "exec"),
    ("post", "/api/v1/exec", "exec"),
    ("put", "/api/v1/nodes/{id}/files", "exec"),
    ("get", "/api/v1/nodes/{id}/files", "exec"),
    ("put", "/api/v1/files", "exec"),
    ("get", "/api/v1/jobs", "read"),
    ("get", "/api/v1/jobs/{id}", "read"),
    ("get", "/api/v1/jobs/{id}/stream", "exec"),
    ("put", "/api/v1/jobs/{id}/stdin", "exec"),
    ("post", "/api/v1/jobs/{id}/resize", "exec"),
    ("post", "/api/v1/jobs/{id}/signal", "exec"),
    ("post", "/api/v1/jobs/{id}/cancel", "exec"),
    ("post", "/api/v1/join-tokens", "admin"),
    ("get", "/api/v1/join-tokens", "admin"),
    ("delete", "/api/v1/join-tokens/{id}", "admin"),
    ("post", "/api/v1/tokens", "admin"),
    ("get", "/api/v1/tokens", "admin"),
    ("delete", "/api/v1/tokens/{jti}", "admin"),
    ("get", "/api/v1/audit", "admin"),
];

/// The roles each permission names, by hand.
fn roles(permission: &str) -> Vec<&'static str> {
    match permission {
        "public" => vec!["anyone"],
        "read" => vec!["gateway", "operator", "viewer"],
        "exec" => vec!["gateway", "operator"],
        "admin" => vec!["gateway"],
        other => panic!("no permission {other}"),
    }
}

/// GET without any `Authorization`, as a tool that has no token yet would.
fn fetch(gw: &Gateway, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(&gw.url(path));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let media = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, media, resp.into_body().read_to_string().unwrap())
}

fn document(gw: &Gateway) -> Value {
    let (status, media, body) = fetch(gw, "/api/v1/openapi.json", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(media, "application/json");
    serde_json::from_str(&body).expect("the document is JSON")
}

#[test]
fn the_document_lists_every_route_and_no_other() {
    let gw = Gateway::start();
    let doc = document(&gw);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));
    assert!(doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, permission) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        let what = format!("{method} {path}");
        assert_eq!(op["x-burrow-permission"], *permission, "{what}");
        assert_eq!(
            op["x-burrow-roles"],
            serde_json::json!(roles(permission)),
            "{what}"
        );
        assert!(
            op["summary"].is_string(),
            "{what} has no documentation entry"
        );
        assert!(op.get("x-burrow-undocumented").is_none(), "{what}");
        if *permission == "public" {
            assert_eq!(op["security"], serde_json::json!([]), "{what}");
        } else {
            // Inherits the document's bearer requirement.
            assert!(op.get("security").is_none(), "{what}");
            for status in ["401", "403"] {
                assert!(op["responses"][status].is_object(), "{what} {status}");
            }
        }
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(params, want, "{what}: path parameters");
        assert!(
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                // 101: a service stream's upgrade is its success.
                .any(|s| s.starts_with('2') || s == "101"),
            "{what}: no success answer"
        );
    }
    let mut listed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed += 1;
            assert!(
                ROUTES.iter().any(|(m, p, _)| m == method && p == path),
                "{method} {path} is served but not in this test's list"
            );
        }
    }
    assert_eq!(listed, ROUTES.len());
}

/// Every 4xx/5xx answer of every operation is the `Error` schema, which requires `error` and `code`.
#[test]
fn every_error_answer_is_the_error_schema() {
    let gw = Gateway::start();
    let doc = document(&gw);
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error", "code"]));
    assert_eq!(error["properties"]["error"]["type"], "string");
    let mut errors = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, answer) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    errors += 1;
                    assert_eq!(
                        answer["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    assert!(errors > ROUTES.len(), "{errors} error answers");
    // And the gateway answers that shape: a 404, a 401.
    for (path, auth, want) in [
        (
            "/api/v1/nodes/nope",
            Some(format!("Bearer {}", gw.token("viewer"))),
            404,
        ),
        ("/api/v1/status", None, 401),
        (
            "/api/v1/tokens",
            Some(format!("Bearer {}", gw.token("operator"))),
            403,
        ),
    ] {
        let (status, media, body) = fetch(&gw, path, auth.as_deref());
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(media, "application/json");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string() && v["code"].is_string(), "{body}");
        let codes = &error["properties"]["code"]["enum"];
        assert!(codes.as_array().unwrap().contains(&v["code"]), "{body}");
    }
}

/// Real answers carry every key the document requires of them (a check of the document against
/// the handlers, not only of its form), and a token is not needed nor looked at for the document.
#[test]
fn real_answers_have_what_the_document_requires() {
    let gw = Gateway::start();
    let doc = document(&gw);
    let (status, _, with_garbage) = fetch(&gw, "/api/v1/openapi.json", Some("Bearer x.y.z"));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&with_garbage).unwrap(), doc);
    let schema = |path: &str, method: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    let (_, status) = gw.api("GET", "/api/v1/status", None);
    let (_, created) = gw.api(
        "POST",
        "/api/v1/tokens",
        Some(serde_json::json!({"role": "viewer", "name": "docs"})),
    );
    let (_, listed) = gw.api("GET", "/api/v1/tokens", None);
    let token_item = doc["components"]["schemas"]["Token"].clone();
    for (schema, answer, what) in [
        (schema("/api/v1/status", "get", "200"), &status, "status"),
        (
            schema("/api/v1/tokens", "post", "201"),
            &created,
            "token create",
        ),
        (token_item, &listed["tokens"][0], "token listing"),
    ] {
        for key in schema["required"].as_array().expect(what) {
            let key = key.as_str().unwrap();
            assert!(
                answer.get(key).is_some(),
                "{what}: {key} missing from {answer}"
            );
        }
    }
}

/// Regression (found by schemathesis): serde filled a body struct from a JSON array, field by field,
/// so `[null, null]` minted a join token and `[null, "id"]` was an exec body running `id`. Arrays
/// are 400 now, and no join token or job comes of them.
#[test]
fn array_bodies_are_refused_not_read_positionally() {
    let gw = Gateway::start();
    for (path, body) in [
        ("/api/v1/join-tokens", serde_json::json!([null, null])),
        ("/api/v1/tokens", serde_json::json!(["viewer"])),
        ("/api/v1/exec", serde_json::json!(["*", "id"])),
    ] {
        let (status, v) = gw.api("POST", path, Some(body));
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["code"], "bad_request", "{v}");
        assert!(v["error"].as_str().unwrap().contains("object"), "{v}");
    }
    let (_, joins) = gw.api("GET", "/api/v1/join-tokens", None);
    assert_eq!(joins["join_tokens"], serde_json::json!([]), "{joins}");
    let (_, jobs) = gw.api("GET", "/api/v1/jobs", None);
    assert_eq!(jobs["jobs"], serde_json::json!([]), "{jobs}");
}
