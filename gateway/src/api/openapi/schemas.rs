//! The document's `components.schemas`: the shapes the handlers really build (`nodes::node_json`,
//! `exec::job_json`/`result_json`, `tokens::token_json`/`join_json`, the request structs with
//! `deny_unknown_fields`, which become `additionalProperties: false`). Answers leave
//! `additionalProperties` open: a field added later must not break a client that validates.
//! Enumerations are taken from the code (`NodeState::ALL`, `Kind::ALL`), not copied.

use serde_json::{json, Map, Value};

use crate::health::NodeState as Health;
use crate::jobs::state::NodeState as Part;
use crate::refusal::Kind;

/// `{"$ref": "#/components/schemas/<name>"}`.
pub fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An object with these `required` keys among `properties`.
fn obj(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

/// A request body object: unknown fields are refused (serde's `deny_unknown_fields`).
fn closed(required: &[&str], properties: Value) -> Value {
    let mut v = obj(required, properties);
    v["additionalProperties"] = json!(false);
    v
}

fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

fn string() -> Value {
    json!({"type": "string"})
}

fn int() -> Value {
    json!({"type": "integer"})
}

fn uint() -> Value {
    json!({"type": "integer", "minimum": 0})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

/// An RFC 3339 time as the API writes it (`2026-12-02T08:00:00Z`).
fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn one_of(names: impl IntoIterator<Item = &'static str>) -> Value {
    json!({"type": "string", "enum": names.into_iter().collect::<Vec<_>>()})
}

/// A node's state as the health module names it.
pub fn health_state() -> Value {
    one_of(Health::ALL.iter().map(|s| s.as_str()))
}

/// A job's state on one node (and of the whole job).
pub fn part_state() -> Value {
    one_of(Part::ALL.iter().map(|s| s.name()))
}

/// Every schema, by name.
pub fn components() -> Value {
    let mut all = Map::new();
    for (name, schema) in [
        ("Error", error()),
        ("Node", node()),
        (
            "NodeList",
            obj(&["nodes"], json!({"nodes": array(r("Node"))})),
        ),
        ("LabelBody", label_body()),
        ("ExecBody", exec_body()),
        ("Result", result()),
        ("Job", job()),
        ("Accepted", accepted()),
        ("Event", event()),
        ("Token", token()),
        ("JoinToken", join_token()),
        ("Alert", alert()),
    ] {
        all.insert(name.into(), schema);
    }
    Value::Object(all)
}

pub fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// The one error shape (`api::error_body`); a 405 adds `allow`.
fn error() -> Value {
    let codes: Vec<&str> = Kind::ALL.iter().map(|k| k.code()).collect();
    let mut v = obj(
        &["error", "code"],
        json!({
            "error": {"type": "string", "description": "What is wrong, for people."},
            "code": {"type": "string", "enum": codes, "description": "Stable machine code."},
            "allow": {"type": "string", "description": "405 only: the methods the path takes."},
        }),
    );
    v["description"] = json!("Every 4xx and 5xx answer, and NDJSON `error` events.");
    v
}

fn node() -> Value {
    let mut status = health_state();
    status["description"] = json!("`offline` also for a node the health module has not seen yet.");
    obj(
        &[
            "id",
            "hostname",
            "status",
            "capabilities",
            "labels",
            "fingerprint",
            "os",
            "arch",
            "version",
            "created_at",
        ],
        json!({
            "id": string(),
            "hostname": string(),
            "status": status,
            "capabilities": strings(),
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "last_seen": nullable(time()),
            "online_since": nullable(time()),
            "state_since": nullable(time()),
            "state_reason": nullable(string()),
            "fingerprint": string(),
            "os": string(),
            "arch": string(),
            "version": string(),
            "ports": nullable(json!({"type": "array", "items": uint(), "minItems": 2, "maxItems": 2})),
            "created_at": time(),
            "approved_at": nullable(time()),
            "metrics": nullable(json!({"type": "object"})),
            "policy": {"nullable": true, "type": "object",
                       "description": "The node owner's exec policy, as the node reports it."},
        }),
    )
}

fn label_body() -> Value {
    closed(
        &[],
        json!({
            "labels": {"type": "object", "additionalProperties": nullable(string()),
                       "description": "Labels to set; null removes one."},
            "capabilities": nullable(strings()),
        }),
    )
}

fn exec_body() -> Value {
    use crate::api::exec::limits::{MAX_LANE, MAX_QUEUE_TTL_S, MAX_TIMEOUT_S};
    let target = json!({
        "description": "POST /api/v1/exec only: a node id, \"*\", a list of ids, or a selector \
                        object (CLI syntax in docs).",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                  {"type": "object"}],
    });
    let mut v = closed(
        &[],
        json!({
            "target": target,
            "command": {"type": "string", "description": "Run by /bin/sh -c; give this or argv."},
            "argv": strings(),
            "timeout_s": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_S,
                          "description": "Default 60."},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "cwd": nullable(string()),
            "lane": {"type": "string", "nullable": true,
                     "pattern": format!("^[A-Za-z0-9._:-]{{1,{MAX_LANE}}}$")},
            "queue_ttl_s": {"type": "integer", "nullable": true, "minimum": 1,
                            "maximum": MAX_QUEUE_TTL_S},
            "batch": {"nullable": true, "oneOf": [uint(), string()],
                      "description": "Nodes at a time: 10, or a share: \"25%\"."},
            "async": {"type": "boolean", "description": "Answer 202 at once."},
            "stdin": nullable(string()),
            "stdin_b64": nullable(string()),
            "stdin_stream": {"type": "boolean",
                             "description": "Input comes from PUT /api/v1/jobs/{id}/stdin."},
            "tty": {"description": "Run on a pseudo-terminal (one node, implies stdin_stream): \
                                    true (24×80) or {rows, cols, term}.",
                    "oneOf": [{"type": "boolean"}, closed(&["rows", "cols"], json!({
                        "rows": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "cols": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "term": nullable(string()),
                    }))]},
        }),
    );
    // Exactly one of `command` and `argv` (`exec::validate`).
    v["oneOf"] = json!([
        {"required": ["command"], "not": {"required": ["argv"]}},
        {"required": ["argv"], "not": {"required": ["command"]}},
    ]);
    v
}

/// One node's part of a job (`exec::result_json`).
fn result() -> Value {
    let dropped = obj(
        &["stdout", "stderr"],
        json!({"stdout": uint(), "stderr": uint()}),
    );
    let mut v = obj(
        &[
            "node",
            "state",
            "exit_code",
            "signal",
            "timed_out",
            "duration_ms",
            "truncated",
            "dropped_bytes",
        ],
        json!({
            "node": string(),
            "state": part_state(),
            "exit_code": nullable(int()),
            "signal": nullable(int()),
            "timed_out": {"type": "boolean"},
            "duration_ms": nullable(uint()),
            "stdout": string(),
            "stdout_b64": {"type": "string", "format": "byte"},
            "stderr": string(),
            "stderr_b64": {"type": "string", "format": "byte"},
            "truncated": {"type": "boolean"},
            "dropped_bytes": dropped,
            "bytes": uint(),
            "sha256": string(),
            "error": string(),
            "code": string(),
            "job_id": {"type": "string", "description": "POST /api/v1/nodes/{id}/exec only."},
        }),
    );
    v["description"] = json!(
        "Output is `stdout` when it is text, else `stdout_b64` (never both); the same for stderr."
    );
    v
}

/// A job (`exec::job_json`); listings leave `results` out and add `nodes`.
fn job() -> Value {
    let summary = json!({"type": "object", "additionalProperties": uint(),
                         "description": "How many nodes are in each state."});
    obj(
        &[
            "job_id",
            "kind",
            "state",
            "created_at",
            "actor",
            "target",
            "lane",
            "summary",
        ],
        json!({
            "job_id": string(),
            "kind": one_of(["exec", "put", "get"]),
            "state": part_state(),
            "created_at": time(),
            "actor": string(),
            "target": string(),
            "lane": string(),
            "results": array(r("Result")),
            "nodes": {"type": "array", "items": {"type": "string"},
                      "description": "Listings only, instead of results."},
            "summary": summary,
            "command": string(),
            "argv": strings(),
            "cwd": string(),
            "path": string(),
            "mode": string(),
            "size": nullable(uint()),
        }),
    )
}

fn accepted() -> Value {
    obj(
        &["job_id", "state", "nodes"],
        json!({"job_id": string(), "state": part_state(), "nodes": strings()}),
    )
}

/// One NDJSON line of a streamed job.
fn event() -> Value {
    obj(
        &["event", "job_id"],
        json!({
            "event": one_of(["job", "start", "stdout", "stderr", "exit", "error", "summary"]),
            "job_id": string(),
            "node": string(),
            "data": string(),
            "data_b64": {"type": "string", "format": "byte"},
        }),
    )
}

/// An API token's metadata (`tokens::token_json`); never the token itself.
fn token() -> Value {
    obj(
        &[
            "jti",
            "name",
            "role",
            "created_at",
            "exp",
            "revoked_at",
            "created_by",
            "state",
        ],
        json!({
            "jti": string(),
            "name": string(),
            "role": one_of(["gateway", "operator", "viewer"]),
            "created_at": time(),
            "exp": time(),
            "revoked_at": nullable(time()),
            "created_by": string(),
            "state": one_of(["active", "expired", "revoked"]),
            "already_revoked": {"type": "boolean", "description": "DELETE only."},
        }),
    )
}

/// A join token's metadata (`tokens::join_json`); never its secret.
fn join_token() -> Value {
    obj(
        &[
            "id",
            "uses",
            "used",
            "uses_left",
            "expires_at",
            "manual",
            "created_at",
            "revoked",
            "state",
        ],
        json!({
            "id": string(),
            "uses": uint(),
            "used": uint(),
            "uses_left": uint(),
            "expires_at": time(),
            "manual": {"type": "boolean"},
            "created_at": time(),
            "revoked": {"type": "boolean"},
            "state": one_of(["active", "expired", "used-up", "revoked"]),
            "already_revoked": {"type": "boolean", "description": "DELETE only."},
        }),
    )
}

/// An alert (`health::notify::hook_json`).
fn alert() -> Value {
    obj(
        &[
            "id",
            "rule",
            "severity",
            "state",
            "summary",
            "started_at",
            "started",
        ],
        json!({
            "id": uint(),
            "rule": string(),
            "node": nullable(string()),
            "severity": string(),
            "state": one_of(["firing", "resolved"]),
            "summary": string(),
            "value": nullable(json!({"type": "number"})),
            "started_at": uint(),
            "resolved_at": nullable(uint()),
            "started": time(),
            "resolved": nullable(time()),
        }),
    )
}

/// Request bodies built in place by the route table.
pub mod bodies {
    use super::*;

    /// Standard base64 of 32 bytes, as `pairing::hello` and `pair` decode nonces.
    const BASE64_32: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

    pub fn hello() -> Value {
        obj(
            &["nonce"],
            json!({"nonce": {"type": "string", "pattern": BASE64_32,
                             "description": "Base64 of 32 random bytes."}}),
        )
    }

    pub fn pair() -> Value {
        obj(
            &["request", "server_nonce", "signature"],
            json!({
                "request": {"type": "string", "description": "The JSON text of the pairing request."},
                "server_nonce": {"type": "string", "pattern": BASE64_32},
                "signature": {"type": "string", "description": "Base64 Ed25519 signature."},
            }),
        )
    }

    pub fn token() -> Value {
        closed(
            &["role"],
            json!({
                "role": one_of(["gateway", "operator", "viewer"]),
                "ttl": {"type": "string", "nullable": true, "description": "30m, 24h, 7d; default 24h."},
                "name": nullable(string()),
                "subject": {"type": "string", "nullable": true, "description": "Older name of `name`."},
            }),
        )
    }

    pub fn resize() -> Value {
        closed(
            &["rows", "cols"],
            json!({
                "rows": {"type": "integer", "minimum": 1, "maximum": 10000},
                "cols": {"type": "integer", "minimum": 1, "maximum": 10000},
            }),
        )
    }

    pub fn signal() -> Value {
        closed(
            &["signal"],
            json!({"signal": {"type": "string", "description": "INT, TERM, HUP, QUIT, KILL, …"}}),
        )
    }

    pub fn join() -> Value {
        closed(
            &[],
            json!({
                "ttl": {"type": "string", "nullable": true, "description": "Default 1h."},
                "uses": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "nullable": true},
                "manual": {"type": "boolean", "description": "Wait for an operator's approval."},
            }),
        )
    }
}

/// Answers built in place by the route table.
pub mod answers;
