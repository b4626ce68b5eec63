//! Writes the seed corpus (corpus/<target>/seed-*): real frames, handshakes, join strings, exec
//! bodies and HTTP requests, each in the input format its target's doc describes. Deterministic
//! (fixed keys and nonces), so running it again changes nothing:
//!   cd core/fuzz && cargo run --example seeds
//! The fuzzer's own finds (and `cargo fuzz cmin`) add to and trim these; they stay in the corpus.

use std::fs;
use std::path::Path;

use burrow_core::api::{Heartbeat, Metrics};
use burrow_core::identity::Identity;
use burrow_core::join::JoinTicket;
use burrow_core::protocol::{stream, ExecSpec, ExitStatus, Message, Purpose, Role, VERSION};
use burrow_core::secure::direction_from_key;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn messages() -> Vec<(&'static str, Message)> {
    vec![
        (
            "exec-argv",
            Message::Exec {
                id: 5,
                job: "0123456789abcdef0123456789abcdef".into(),
                spec: ExecSpec {
                    argv: Some(vec!["uname".into(), "-a".into()]),
                    timeout_s: 60,
                    ..ExecSpec::default()
                },
            },
        ),
        (
            "exec-command",
            Message::Exec {
                id: 6,
                job: "fedcba9876543210fedcba9876543210".into(),
                spec: ExecSpec {
                    command: Some("echo $HOME; cat".into()),
                    env: [("LANG".to_string(), "C".to_string())].into(),
                    cwd: Some("/tmp".into()),
                    timeout_s: 5,
                    stdin: true,
                    ..ExecSpec::default()
                },
            },
        ),
        (
            "open",
            Message::Open {
                id: 5,
                stream: 16,
                purpose: Purpose::File,
                params: r#"{"path":"/etc/hostname"}"#.into(),
            },
        ),
        (
            "data",
            Message::Data {
                id: 5,
                stream: stream::STDOUT,
                data: b"Linux pi 6.1.0\n\0\xff".to_vec(),
            },
        ),
        (
            "credit",
            Message::Credit {
                id: 5,
                stream: stream::STDOUT,
                bytes: 65536,
            },
        ),
        (
            "exit",
            Message::Exit {
                id: 5,
                status: ExitStatus {
                    exit_code: Some(0),
                    signal: None,
                    timed_out: false,
                    duration_ms: 12,
                },
            },
        ),
        (
            "failed",
            Message::Failed {
                id: 2,
                message: "refused by policy: allowlist".into(),
            },
        ),
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                version: "0.1.0".into(),
                metrics: Metrics {
                    uptime_s: 7,
                    load1: 0.5,
                    ..Metrics::default()
                },
                max_jobs: 64,
                running: 2,
                ..Heartbeat::default()
            }),
        ),
        ("ping", Message::Ping(42)),
        ("cancel", Message::Cancel { id: 5 }),
    ]
}

fn hello(role: Role, seed: u8) -> Message {
    Message::Hello {
        version: VERSION,
        role,
        key: *Identity::from_seed([seed; 32], "peer").public().as_bytes(),
        ephemeral: [9; 32],
        nonce: [seed; 32],
    }
}

fn plain_frame(message: &Message) -> Vec<u8> {
    let body = message.encode_body().unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn main() {
    // decode: frame bodies (the target also reads them as plaintext framing).
    for (name, m) in messages() {
        write("decode", name, &m.encode_body().unwrap());
    }
    write(
        "decode",
        "hello",
        &hello(Role::Agent, 2).encode_body().unwrap(),
    );
    write("decode", "plain-frame", &plain_frame(&Message::Ping(1)));

    // handshake: the peer's Hello (the pinned key: seed 2), then a sealed Auth under some key.
    let (mut stranger, _) = direction_from_key(&[5; 32]);
    let auth = stranger
        .seal(&Message::Auth { signature: [3; 64] })
        .unwrap();
    for (mode, role, name) in [
        (0u8, Role::Agent, "as-gateway"),
        (1, Role::Gateway, "as-agent"),
        (2, Role::Agent, "as-gateway-accept-any"),
    ] {
        let mut peer = plain_frame(&hello(role, 2));
        write(
            "handshake",
            &format!("{name}-hello"),
            &with_mode(mode, &peer),
        );
        peer.extend_from_slice(&auth);
        write(
            "handshake",
            &format!("{name}-hello-auth"),
            &with_mode(mode, &peer),
        );
    }
    let mut same_role = plain_frame(&hello(Role::Gateway, 2));
    same_role.extend_from_slice(&auth);
    write("handshake", "same-role", &with_mode(0, &same_role));

    // sealed: frames sealed under the target's key, as a stream (mode 0) and as bodies (mode 1).
    let (mut sealer, _) = direction_from_key(&[7; 32]);
    let mut stream = Vec::new();
    let mut bodies = Vec::new();
    for (_, m) in messages() {
        stream.extend_from_slice(&sealer.seal(&m).unwrap());
        let body = m.encode_body().unwrap();
        bodies.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bodies.extend_from_slice(&body);
    }
    write("sealed", "stream", &with_mode(0, &stream));
    write("sealed", "bodies", &with_mode(1, &bodies));
    write("sealed", "bodies-choppy", &with_mode(1 | (3 << 2), &bodies));
    write(
        "sealed",
        "bodies-flipped",
        &with_mode(3 | (5 << 2), &bodies),
    );
    let exec = messages()[1].1.encode_body().unwrap();
    write("sealed", "one-body", &with_mode(1, &exec));

    // join: a real join string (mode 0) and its JSON (mode 1).
    let ticket = JoinTicket {
        ssh: "203.0.113.7:2222".into(),
        user: "burrow".into(),
        enroll_user: Some("burrow-enroll".into()),
        host_key: "SHA256:uN8hBoJmEhXHkDWBqDSNEZsyyvlqNBmuWrGgRLA6sQo".into(),
        gateway_key: Identity::from_seed([4; 32], "gateway").public().to_base64(),
        api_port: 18789,
        secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlYw".into(),
    };
    write("join", "string", &with_mode(0, ticket.encode().as_bytes()));
    write(
        "join",
        "json",
        &with_mode(1, &serde_json::to_vec(&ticket).unwrap()),
    );
    let old = JoinTicket {
        enroll_user: None,
        ..ticket
    };
    write(
        "join",
        "json-old",
        &with_mode(1, &serde_json::to_vec(&old).unwrap()),
    );

    // exec_request: bodies of POST /api/v1/exec (mode 0) and POST /api/v1/nodes/{id}/exec (mode 1).
    let fleet: &[(&str, &str)] = &[
        ("argv", r#"{"target":"pi-1","argv":["uname","-a"]}"#),
        (
            "command-all",
            r#"{"target":"*","command":"df -h /","timeout_s":30,"lane":"maint","batch":"25%"}"#,
        ),
        (
            "selector",
            r#"{"target":{"glob":"pi-*","capabilities":["gpu"],"labels":{"site":"home"}},"argv":["nvidia-smi"],"env":{"LANG":"C"},"cwd":"/tmp"}"#,
        ),
        (
            "any",
            r#"{"target":{"any":"label:site=home,cap:gpu"},"command":"uptime","async":true,"queue_ttl_s":600}"#,
        ),
        (
            "list-stdin",
            r#"{"target":["pi-1","pi-2"],"command":"cat","stdin_b64":"aGVsbG8K","batch":1}"#,
        ),
    ];
    for (name, body) in fleet {
        write("exec_request", name, &with_mode(0, body.as_bytes()));
    }
    let node: &[(&str, &str)] = &[
        ("node-command", r#"{"command":"uptime"}"#),
        (
            "node-stdin-stream",
            r#"{"argv":["cat"],"stdin_stream":true,"async":true}"#,
        ),
        (
            "node-stdin",
            r#"{"command":"wc -c","stdin":"hello\n","timeout_s":5}"#,
        ),
    ];
    for (name, body) in node {
        write("exec_request", name, &with_mode(1, body.as_bytes()));
    }

    // http: what clients of the API send on one connection.
    let exec = r#"{"target":"pi-1","argv":["uname","-a"]}"#;
    let requests: Vec<(&str, String)> = vec![
        (
            "get",
            "GET /api/v1/nodes HTTP/1.1\r\nHost: 127.0.0.1:18789\r\nAuthorization: Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln\r\n\r\n".into(),
        ),
        (
            "post-exec",
            format!(
                "POST /api/v1/exec HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{exec}",
                exec.len()
            ),
        ),
        (
            "chunked-put",
            "PUT /api/v1/files?target=pi-1&path=/tmp/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n".into(),
        ),
        (
            "pipelined",
            "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "expect-continue",
            "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 16\r\n\r\n{\"role\":\"viewer\"}".into(),
        ),
        (
            "unread-body",
            "POST /unread HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789GET /after HTTP/1.1\r\n\r\n".into(),
        ),
        (
            "http10",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD /api/v1/health HTTP/1.0\r\n\r\n".into(),
        ),
    ];
    for (name, text) in requests {
        write("http", name, text.as_bytes());
    }
}
