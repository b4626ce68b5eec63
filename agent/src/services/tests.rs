//! Service streams through a real agent connection (the service module's test gateway), to real
//! sockets on 127.0.0.1 and in a temp dir.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::Duration;

use burrow_core::protocol::{Message, Purpose, INITIAL_WINDOW};

use super::{parse_declared, Address, Declared, STREAM};
use crate::policy::Policy;
use crate::service::tests::support::{wait_until, TestGateway, TestNode};

fn declared(name: &str, addr: &str) -> Declared {
    parse_declared(&format!("{name}={addr}")).unwrap()
}

fn open(gateway: &mut TestGateway, id: u32, service: &str) {
    gateway.send(&Message::Open {
        id,
        stream: STREAM,
        purpose: Purpose::Service,
        params: serde_json::json!({ "service": service }).to_string(),
    });
}

/// An echo server on 127.0.0.1 that serves `connections` connections, each until its client's EOF.
fn echo_server(connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for conn in listener.incoming().take(connections) {
            let mut conn = conn.unwrap();
            thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                std::io::copy(&mut reader, &mut conn).unwrap();
                // The client's EOF: end our side too.
                conn.shutdown(std::net::Shutdown::Write).unwrap();
            });
        }
    });
    addr
}

/// Collects `Data` on the stream until `Eof`, returning credit as a gateway does; then the last
/// frame (what comes after the `Eof`).
fn read_to_end(gateway: &mut TestGateway, id: u32) -> (Vec<u8>, Message) {
    let mut got = Vec::new();
    loop {
        match gateway.recv() {
            Message::Data {
                id: i,
                stream,
                data,
            } if i == id && stream == STREAM => {
                gateway.send(&Message::Credit {
                    id,
                    stream,
                    bytes: data.len() as u32,
                });
                got.extend_from_slice(&data);
            }
            Message::Credit { id: i, .. } if i == id => {}
            Message::Eof { id: i, stream } if i == id && stream == STREAM => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    loop {
        match gateway.recv() {
            Message::Credit { id: i, .. } if i == id => {}
            last => return (got, last),
        }
    }
}

#[test]
fn service_declarations_are_checked_before_the_agent_starts() {
    assert_eq!(
        declared("ssh", "127.0.0.1:22").address,
        Address::Tcp("127.0.0.1:22".into())
    );
    assert_eq!(
        declared("web_ui-2", "unix:/run/web.sock").address,
        Address::Unix("/run/web.sock".into())
    );
    assert_eq!(
        declared("db", "[::1]:5432").address.to_string(),
        "[::1]:5432"
    );
    for bad in [
        "ssh",
        "=127.0.0.1:22",
        "SSH=127.0.0.1:22",
        "-x=127.0.0.1:22",
        "ssh=127.0.0.1",
        "ssh=127.0.0.1:0",
        "ssh=127.0.0.1:99999",
        "web=unix:relative.sock",
        &format!("{}=127.0.0.1:1", "a".repeat(33)),
    ] {
        assert!(parse_declared(bad).is_err(), "{bad:?} was accepted");
    }
    let twice = super::Services::new(
        vec![declared("a", "127.0.0.1:1"), declared("a", "127.0.0.1:2")],
        4,
    );
    assert!(twice.is_err());
}

#[test]
fn the_policy_turns_all_services_or_single_ones_off() {
    let path = std::path::Path::new("/etc/burrow/policy.toml");
    let on = Policy::parse("", path).unwrap();
    assert!(on.check_service("ssh").is_ok());
    let all_off = Policy::parse("services = false\n", path).unwrap();
    assert_eq!(all_off.check_service("ssh").unwrap_err().rule, "services");
    let one_off = Policy::parse("services_off = [\"web\"]\n", path).unwrap();
    assert!(one_off.check_service("ssh").is_ok());
    assert_eq!(
        one_off.check_service("web").unwrap_err().rule,
        "services_off"
    );
}

#[test]
fn a_stream_carries_bytes_both_ways_with_half_close_then_exit() {
    let addr = echo_server(1);
    let node = TestNode::with_services(vec![declared("echo", &addr)], 4);
    let mut gateway = node.connect();
    open(&mut gateway, 1, "echo");
    // Connected: the first Credit grants the initial window.
    assert_eq!(
        gateway.recv(),
        Message::Credit {
            id: 1,
            stream: STREAM,
            bytes: INITIAL_WINDOW
        }
    );
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(32 * 1024) {
        gateway.send(&Message::Data {
            id: 1,
            stream: STREAM,
            data: chunk.to_vec(),
        });
    }
    gateway.send(&Message::Eof {
        id: 1,
        stream: STREAM,
    });
    let (echoed, last) = read_to_end(&mut gateway, 1);
    assert_eq!(echoed, payload);
    match last {
        Message::Exit { id: 1, status } => assert_eq!(status.exit_code, Some(0)),
        other => panic!("expected Exit, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(5), || node
        .ctx
        .services
        .open_streams()
        == 0));
}

#[test]
fn a_unix_socket_service_is_reached_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.sock");
    let listener = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"hello from unix\n").unwrap();
    });
    let node = TestNode::with_services(vec![declared("u", &format!("unix:{}", path.display()))], 4);
    let mut gateway = node.connect();
    open(&mut gateway, 3, "u");
    gateway.send(&Message::Eof {
        id: 3,
        stream: STREAM,
    });
    let (got, last) = read_to_end(&mut gateway, 3);
    assert_eq!(got, b"hello from unix\n");
    assert!(matches!(last, Message::Exit { id: 3, .. }), "{last:?}");
}

#[test]
fn an_undeclared_service_is_refused_with_the_declared_names() {
    let node = TestNode::with_services(vec![declared("ssh", "127.0.0.1:22")], 4);
    let mut gateway = node.connect();
    open(&mut gateway, 1, "postgres");
    match gateway.recv() {
        Message::Failed { id: 1, message } => {
            assert!(message.starts_with("refused (not-declared): "), "{message}");
            assert!(message.contains("it has: ssh"), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_service_that_does_not_listen_is_unreachable() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = TestNode::with_services(vec![declared("gone", &format!("127.0.0.1:{port}"))], 4);
    let mut gateway = node.connect();
    open(&mut gateway, 1, "gone");
    match gateway.recv() {
        Message::Failed { id: 1, message } => {
            assert!(message.starts_with("unreachable: "), "{message}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn streams_over_the_node_cap_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = TestNode::with_services(vec![declared("held", &addr)], 1);
    let mut gateway = node.connect();
    open(&mut gateway, 1, "held");
    assert!(matches!(gateway.recv(), Message::Credit { id: 1, .. }));
    open(&mut gateway, 2, "held");
    match gateway.recv() {
        Message::Failed { id: 2, message } => {
            assert!(
                message.starts_with("refused (too-many-streams): "),
                "{message}"
            )
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    drop(listener);
}

#[test]
fn a_reset_from_the_gateway_closes_the_service_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = TestNode::with_services(vec![declared("svc", &addr)], 4);
    let mut gateway = node.connect();
    open(&mut gateway, 1, "svc");
    let (mut conn, _) = listener.accept().unwrap();
    assert!(matches!(gateway.recv(), Message::Credit { id: 1, .. }));
    gateway.send(&Message::Reset {
        id: 1,
        stream: STREAM,
        reason: "client went away".into(),
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "the socket was not closed");
    assert!(wait_until(Duration::from_secs(5), || node
        .ctx
        .services
        .open_streams()
        == 0));
}

#[test]
fn a_service_that_floods_is_held_to_the_gateways_credit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        // Writes until the agent stops reading (its socket buffers fill), then errors when closed.
        while conn.write_all(&chunk).is_ok() {}
    });
    let node = TestNode::with_services(vec![declared("flood", &addr)], 4);
    let mut gateway = node.connect();
    open(&mut gateway, 1, "flood");
    let mut received = 0usize;
    // No credit returned: the agent must stop at the initial window.
    while let Some(message) = gateway.recv_within(Duration::from_millis(500)) {
        if let Message::Data { data, .. } = message {
            received += data.len();
        }
    }
    assert_eq!(received, INITIAL_WINDOW as usize);
    gateway.send(&Message::Credit {
        id: 1,
        stream: STREAM,
        bytes: 1000,
    });
    let mut more = 0usize;
    while let Some(message) = gateway.recv_within(Duration::from_millis(500)) {
        if let Message::Data { data, .. } = message {
            more += data.len();
        }
    }
    assert_eq!(more, 1000);
}
