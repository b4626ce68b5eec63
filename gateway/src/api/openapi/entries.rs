//! What the route table does not say about each route, keyed by (method, pattern): a summary, the
//! query parameters, the request body, the answers by status and the error statuses the handler
//! itself gives. Permission, path parameters, 401/403 and 413 come from [`super::super::routes`].
//!
//! A new route needs a row here (a test fails otherwise); copy the nearest one and read the
//! handler for what it really answers.

use serde_json::{json, Value};

use super::schemas::{answers, bodies, health_state, part_state, r};

pub struct Entry {
    pub method: &'static str,
    pub pattern: &'static str,
    pub summary: &'static str,
    pub query: &'static [Query],
    pub body: Body,
    /// Successful answers; a status may appear once per media type.
    pub answers: &'static [Answer],
    /// Error statuses the handler answers (4xx/5xx with the `Error` shape).
    pub errors: &'static [u16],
}

pub struct Query {
    pub name: &'static str,
    pub schema: fn() -> Value,
    pub required: bool,
    pub description: &'static str,
}

pub enum Body {
    None,
    /// `application/json` of this schema.
    Json(fn() -> Value),
    /// `application/octet-stream`, read as it arrives.
    Bytes(&'static str),
}

pub struct Answer {
    pub status: u16,
    pub media: Media,
    pub schema: fn() -> Value,
    pub description: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Json,
    /// `application/x-ndjson`: one JSON object per line, streamed.
    Ndjson,
    Bytes,
    /// The Prometheus text format.
    Prometheus,
    /// After `101 Switching Protocols`: the raw bytes of a service stream, both ways.
    Upgrade,
}

const fn ok(schema: fn() -> Value, description: &'static str) -> Answer {
    Answer {
        status: 200,
        media: Media::Json,
        schema,
        description,
    }
}

const fn q(name: &'static str, schema: fn() -> Value, description: &'static str) -> Query {
    Query {
        name,
        schema,
        required: false,
        description,
    }
}

const LIMIT: Query = q(
    "limit",
    || json!({"type": "integer", "minimum": 1, "maximum": 1000}),
    "At most this many, newest first (default 100).",
);

const STRING: fn() -> Value = || json!({"type": "string"});

const NODE: Answer = ok(|| r("Node"), "The node.");
const JOB: Answer = ok(|| r("Job"), "The job, with each node's result.");
const STREAM: Answer = Answer {
    status: 200,
    media: Media::Ndjson,
    schema: || r("Event"),
    description: "With `Accept: application/x-ndjson`: events as they happen.",
};
const ACCEPTED: Answer = Answer {
    status: 202,
    media: Media::Json,
    schema: || r("Accepted"),
    description: "With `\"async\": true`: the job is submitted.",
};
const PATH: Query = Query {
    name: "path",
    // `files::checked_path`: absolute, not a directory, no NUL, at most 4096 bytes.
    schema: || json!({"type": "string", "pattern": "^/[^\\x00]*[^/\\x00]$", "maxLength": 4096}),
    required: true,
    description: "Absolute path of the file on the node.",
};
const MODE: Query = q(
    "mode",
    || json!({"type": "string", "pattern": "^[0-7]{1,4}$"}),
    "Octal permission bits (default 0644).",
);

pub const ENTRIES: &[Entry] = &[
    Entry {
        method: "GET",
        pattern: "/healthz",
        summary: "Liveness: the API answers.",
        query: &[],
        body: Body::None,
        answers: &[ok(answers::healthz, "Up.")],
        errors: &[],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/agent/hello",
        summary: "An enrolling agent asks the gateway to prove its key (signs the agent's nonce).",
        query: &[],
        body: Body::Json(bodies::hello),
        answers: &[ok(
            answers::hello,
            "The signature and a one-time server nonce.",
        )],
        errors: &[400],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/agent/pair",
        summary: "An enrolling agent pairs: a request signed by its key over the server nonce.",
        query: &[],
        body: Body::Json(bodies::pair),
        answers: &[ok(answers::pair, "Where the pairing stands.")],
        errors: &[400, 401, 403, 409],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/openapi.json",
        summary: "This document, generated from the route table.",
        query: &[],
        body: Body::None,
        answers: &[ok(answers::document, "OpenAPI 3.0 document.")],
        errors: &[],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/status",
        summary: "The fleet at a glance: node counts, alerts, jobs, the data dir, sshd.",
        query: &[],
        body: Body::None,
        answers: &[ok(answers::status, "Status.")],
        errors: &[],
    },
    Entry {
        method: "GET",
        pattern: "/metrics",
        summary: "Prometheus exposition of the gateway and its nodes.",
        query: &[],
        body: Body::None,
        answers: &[Answer {
            status: 200,
            media: Media::Prometheus,
            schema: || json!({"type": "string"}),
            description: "Prometheus text format 0.0.4.",
        }],
        errors: &[],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/nodes",
        summary: "Nodes; every filter given must hold.",
        query: &[
            q("status", health_state, "Only nodes in this state."),
            q(
                "label",
                || json!({"type": "string", "pattern": "^[^=]+="}),
                "KEY=VALUE: only nodes with this label.",
            ),
            q(
                "capability",
                || json!({"type": "string"}),
                "Only nodes with this capability.",
            ),
        ],
        body: Body::None,
        answers: &[ok(|| r("NodeList"), "The nodes.")],
        errors: &[400],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/nodes/{id}",
        summary: "One node, with its last metrics and the summary of its exec policy.",
        query: &[],
        body: Body::None,
        answers: &[NODE],
        errors: &[404],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/metrics",
        summary: "A node's metrics history, oldest first.",
        query: &[
            q(
                "since",
                || json!({"type": "string"}),
                "Unix seconds, an RFC 3339 time or a duration back from now (90m); default 24h.",
            ),
            q(
                "step",
                || json!({"type": "string"}),
                "Seconds or a duration (5m), 1m to 1d.",
            ),
        ],
        body: Body::None,
        answers: &[ok(answers::samples, "Samples.")],
        errors: &[400, 404],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/services/{name}/connect",
        summary: "A byte stream to a service the node declares, over an HTTP upgrade \
                  (`Connection: Upgrade`, `Upgrade: burrow-stream`; `gateway connect` speaks it).",
        query: &[],
        body: Body::None,
        answers: &[Answer {
            status: 101,
            media: Media::Upgrade,
            schema: STRING,
            description: "Connected: the connection now carries the service's bytes both ways; \
                          the client half-closes its side when it has nothing more to send.",
        }],
        errors: &[400, 404, 409, 429, 502, 503, 504],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/history",
        summary: "A node's state changes, newest first.",
        query: &[LIMIT],
        body: Body::None,
        answers: &[ok(answers::history, "State changes.")],
        errors: &[400, 404],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/alerts",
        summary: "Alerts, newest first.",
        query: &[
            q(
                "state",
                || json!({"type": "string", "enum": ["firing", "resolved"]}),
                "Only alerts in this state.",
            ),
            LIMIT,
        ],
        body: Body::None,
        answers: &[ok(answers::alerts, "Alerts.")],
        errors: &[400],
    },
    Entry {
        method: "PATCH",
        pattern: "/api/v1/nodes/{id}",
        summary: "Set or remove a node's labels, replace its capabilities. Audited.",
        query: &[],
        body: Body::Json(|| r("LabelBody")),
        answers: &[NODE],
        errors: &[400, 404],
    },
    Entry {
        method: "DELETE",
        pattern: "/api/v1/nodes/{id}",
        summary: "Remove a node for good: its key, sessions and link are cut.",
        query: &[],
        body: Body::None,
        answers: &[ok(answers::revoked_node, "Revoked.")],
        errors: &[404],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/approve",
        summary: "Approve a pending (or rejected) node.",
        query: &[],
        body: Body::None,
        answers: &[NODE],
        errors: &[404, 409],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/reject",
        summary: "Reject a node: its key loses all access at once.",
        query: &[],
        body: Body::None,
        answers: &[NODE],
        errors: &[404],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/exec",
        summary: "Run a command on this node (the node's policy decides). A job; audited.",
        query: &[],
        body: Body::Json(|| r("ExecBody")),
        answers: &[
            ok(|| r("Result"), "The node's result, with `job_id`."),
            STREAM,
            ACCEPTED,
        ],
        errors: &[400, 403, 404, 409, 503, 504],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/exec",
        summary: "Run a command on a target (ids, \"*\", selectors). A job; audited.",
        query: &[],
        body: Body::Json(|| r("ExecBody")),
        answers: &[JOB, STREAM, ACCEPTED],
        errors: &[400, 404, 409, 503],
    },
    Entry {
        method: "PUT",
        pattern: "/api/v1/nodes/{id}/files",
        summary: "Push the body to a file on the node (written to a temp file, fsynced, renamed).",
        query: &[PATH, MODE],
        body: Body::Bytes("The file's bytes."),
        answers: &[JOB],
        errors: &[400, 404, 409, 503],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/files",
        summary: "Pull a file from the node, streamed; the job id is in `X-Burrow-Job`.",
        query: &[PATH],
        body: Body::None,
        answers: &[Answer {
            status: 200,
            media: Media::Bytes,
            schema: || json!({"type": "string", "format": "binary"}),
            description: "The file's bytes.",
        }],
        errors: &[400, 403, 404, 409, 503, 504],
    },
    Entry {
        method: "PUT",
        pattern: "/api/v1/files",
        summary: "Push the body to a file on every node of a target.",
        query: &[
            Query {
                name: "target",
                schema: || json!({"type": "string", "minLength": 1}),
                required: true,
                description: "CLI target syntax: pi-1, glob:pi-*, label:site=home, …",
            },
            PATH,
            MODE,
        ],
        body: Body::Bytes("The file's bytes."),
        answers: &[JOB],
        errors: &[400, 404, 409],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/jobs",
        summary: "Jobs, newest first, without their output.",
        query: &[
            q(
                "node",
                || json!({"type": "string"}),
                "Only jobs on this node.",
            ),
            q("state", part_state, "Only jobs with a node in this state."),
            LIMIT,
            q(
                "before",
                || json!({"type": "string"}),
                "A job id: the page after it (`next_before`).",
            ),
        ],
        body: Body::None,
        answers: &[ok(answers::jobs, "A page of jobs.")],
        errors: &[400],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/jobs/{id}",
        summary: "A job with each node's result.",
        query: &[],
        body: Body::None,
        answers: &[JOB],
        errors: &[404],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/jobs/{id}/stream",
        summary: "A job's events: those kept, then live ones until it ends.",
        query: &[],
        body: Body::None,
        answers: &[Answer {
            status: 200,
            media: Media::Ndjson,
            schema: || r("Event"),
            description: "Events.",
        }],
        errors: &[404],
    },
    Entry {
        method: "PUT",
        pattern: "/api/v1/jobs/{id}/stdin",
        summary: "Stream the body to the standard input of a job made with `stdin_stream`.",
        query: &[],
        body: Body::Bytes("The command's input; its end is the input's end."),
        answers: &[ok(answers::stdin, "The input was delivered.")],
        errors: &[400, 404, 409],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/resize",
        summary: "Resize a tty job's terminal (the command gets SIGWINCH).",
        query: &[],
        body: Body::Json(bodies::resize),
        answers: &[ok(answers::resize, "The agent was told.")],
        errors: &[400, 404, 409],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/signal",
        summary: "Signal a tty job's foreground process group (INT, TERM, HUP, …). Audited.",
        query: &[],
        body: Body::Json(bodies::signal),
        answers: &[ok(answers::signal, "The agent was told.")],
        errors: &[400, 404, 409],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/cancel",
        summary: "Cancel a job: queued parts never run, running ones are killed. Audited.",
        query: &[],
        body: Body::None,
        answers: &[JOB],
        errors: &[404, 409],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/join-tokens",
        summary: "Mint a join token (the join string is shown once).",
        query: &[],
        body: Body::Json(bodies::join),
        answers: &[Answer {
            status: 201,
            media: Media::Json,
            schema: answers::join_created,
            description: "Created.",
        }],
        errors: &[400],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/join-tokens",
        summary: "Join tokens, newest first; never a secret.",
        query: &[],
        body: Body::None,
        answers: &[ok(answers::joins, "Join tokens.")],
        errors: &[],
    },
    Entry {
        method: "DELETE",
        pattern: "/api/v1/join-tokens/{id}",
        summary: "Revoke a join token: it cannot pair any more. Idempotent.",
        query: &[],
        body: Body::None,
        answers: &[ok(|| r("JoinToken"), "Revoked.")],
        errors: &[404],
    },
    Entry {
        method: "POST",
        pattern: "/api/v1/tokens",
        summary: "Mint an API token (shown once). Audited.",
        query: &[],
        body: Body::Json(bodies::token),
        answers: &[Answer {
            status: 201,
            media: Media::Json,
            schema: answers::token_created,
            description: "Created.",
        }],
        errors: &[400],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/tokens",
        summary: "API tokens, newest first: metadata only, never a token.",
        query: &[],
        body: Body::None,
        answers: &[ok(answers::tokens, "Tokens.")],
        errors: &[],
    },
    Entry {
        method: "DELETE",
        pattern: "/api/v1/tokens/{jti}",
        summary: "Revoke an API token from the next request on. Idempotent; audited.",
        query: &[],
        body: Body::None,
        answers: &[ok(|| r("Token"), "Revoked.")],
        errors: &[404],
    },
    Entry {
        method: "GET",
        pattern: "/api/v1/audit",
        summary: "The audit trail, oldest first, filtered and paged (`next` → `cursor`).",
        query: &[
            q(
                "since",
                STRING,
                "From this time on: RFC 3339, Unix seconds or an age (`2h`).",
            ),
            q("node", STRING, "Entries about this node."),
            q("actor", STRING, "Entries by this token name or Unix user."),
            q(
                "action",
                STRING,
                "Entries of this action (`exec`, `token.create`, …).",
            ),
            q(
                "cursor",
                || json!({"type": "integer", "minimum": 0}),
                "Entries after this seq (the previous page's `next`).",
            ),
            q(
                "limit",
                || json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                "At most this many (default 100).",
            ),
        ],
        body: Body::None,
        answers: &[ok(answers::audit, "Entries.")],
        errors: &[400],
    },
];
