//! The answers the route table builds in place (the shared shapes are in `schemas.rs`).

use super::*;

pub fn healthz() -> Value {
    obj(&["status"], json!({"status": one_of(["ok"])}))
}

pub fn hello() -> Value {
    obj(
        &["server_nonce", "signature"],
        json!({"server_nonce": string(), "signature": string()}),
    )
}

pub fn pair() -> Value {
    obj(
        &["status"],
        json!({
            "status": one_of(["approved", "pending", "rejected"]),
            "message": string(),
            "token": string(),
            "ports": {"type": "array", "items": uint(), "minItems": 2, "maxItems": 2},
        }),
    )
}

pub fn status() -> Value {
    let mut counts = Map::new();
    counts.insert("total".into(), uint());
    for s in Health::ALL {
        counts.insert(s.as_str().into(), uint());
    }
    obj(
        &[
            "version",
            "uptime_s",
            "nodes",
            "max_nodes",
            "nodes_used",
            "alerts",
            "jobs",
        ],
        json!({
            "version": string(),
            "uptime_s": uint(),
            "nodes": {"type": "object", "required": ["total"], "properties": counts},
            "max_nodes": uint(),
            "nodes_used": uint(),
            "alerts": obj(&["firing"], json!({"firing": uint()})),
            "jobs": obj(&["queued", "running"], json!({"queued": uint(), "running": uint()})),
            "data_dir": obj(&["path"], json!({"path": string(), "store_bytes": uint()})),
            "ssh": {"type": "object"},
            "sshd": {"type": "object"},
        }),
    )
}

pub fn revoked_node() -> Value {
    obj(
        &["id", "fingerprint", "revoked"],
        json!({"id": string(), "fingerprint": string(), "revoked": {"type": "boolean"}}),
    )
}

pub fn samples() -> Value {
    let sample = obj(
        &["at", "at_unix", "metrics"],
        json!({"at": time(), "at_unix": uint(), "metrics": {"type": "object"}}),
    );
    obj(
        &["node", "since", "step_s", "samples"],
        json!({"node": string(), "since": time(), "step_s": uint(), "samples": array(sample)}),
    )
}

pub fn history() -> Value {
    let change = obj(
        &["at", "from", "to", "reason"],
        json!({"at": time(), "from": nullable(health_state()), "to": health_state(),
               "reason": string()}),
    );
    obj(
        &["node", "state", "since", "reason", "changes"],
        json!({
            "node": string(),
            "state": nullable(health_state()),
            "since": nullable(time()),
            "reason": nullable(string()),
            "changes": array(change),
        }),
    )
}

pub fn alerts() -> Value {
    obj(&["alerts"], json!({"alerts": array(r("Alert"))}))
}

pub fn jobs() -> Value {
    obj(
        &["jobs", "next_before"],
        json!({"jobs": array(r("Job")), "next_before": nullable(string())}),
    )
}

pub fn stdin() -> Value {
    obj(
        &["job_id", "bytes"],
        json!({"job_id": string(), "bytes": uint()}),
    )
}

pub fn token_created() -> Value {
    obj(
        &["token", "jti", "exp", "name", "subject", "role"],
        json!({
            "token": {"type": "string", "description": "The JWT; shown this once."},
            "jti": string(),
            "exp": time(),
            "name": string(),
            "subject": string(),
            "role": one_of(["gateway", "operator", "viewer"]),
        }),
    )
}

pub fn tokens() -> Value {
    obj(&["tokens"], json!({"tokens": array(r("Token"))}))
}

pub fn join_created() -> Value {
    obj(
        &["join", "id", "expires_at", "uses", "manual"],
        json!({
            "join": {"type": "string", "description": "The join string for `agent run --join`."},
            "id": string(),
            "expires_at": time(),
            "uses": uint(),
            "manual": {"type": "boolean"},
        }),
    )
}

/// `GET /api/v1/audit`: entries as the log holds them (gateway/src/audit.rs `entry`, sealed by
/// `chain::seal`), oldest first, and the cursor of the next page.
pub fn audit() -> Value {
    let entry = obj(
        &[
            "seq", "ts", "actor", "action", "target", "detail", "prev", "hash",
        ],
        json!({
            "seq": uint(),
            "ts": time(),
            "actor": {"type": "string", "description": "Token name, or the Unix user of a CLI call."},
            "role": string(),
            "jti": string(),
            "action": {"type": "string", "description": "exec, exec.end, token.create, node.approve, denied, …"},
            "target": string(),
            "detail": {"type": "object", "description": "What the action was about: argv, nodes, exit codes, sizes; never output."},
            "prev": {"type": "string", "description": "SHA-256 of the previous line (hex)."},
            "hash": {"type": "string", "description": "SHA-256 of this line before `hash` (hex)."},
        }),
    );
    obj(
        &["entries", "next"],
        json!({
            "entries": array(entry),
            "next": nullable(json!({"type": "integer", "minimum": 0, "description": "Pass back as `cursor` for the next page; null at the end."})),
        }),
    )
}

pub fn joins() -> Value {
    obj(
        &["join_tokens"],
        json!({"join_tokens": array(r("JoinToken"))}),
    )
}

pub fn document() -> Value {
    obj(
        &["openapi", "info", "paths"],
        json!({"openapi": string(), "info": {"type": "object"}, "paths": {"type": "object"}}),
    )
}

pub fn resize() -> Value {
    obj(
        &["job_id", "rows", "cols"],
        json!({"job_id": string(), "rows": uint(), "cols": uint()}),
    )
}

pub fn signal() -> Value {
    obj(
        &["job_id", "signal"],
        json!({"job_id": string(), "signal": string()}),
    )
}
