//! PATCH(peer-credentials) test: a request over a Unix socket carries the kernel's record of who
//! connected; one over TCP carries none.
#![cfg(all(feature = "unix-peer-credentials", target_os = "linux"))]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use tiny_http::{Limits, Response, Server};

fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[test]
fn unix_socket_requests_carry_peer_credentials() {
    let path = std::env::temp_dir().join(format!("tiny-http-peer-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let server = Server::from_listener_with_limits(
        UnixListener::bind(&path).unwrap(),
        None,
        Limits::default(),
    )
    .unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let rq = server.recv().unwrap();
    let peer = *rq.peer_credentials().expect("credentials of a Unix peer");
    assert_eq!(peer.uid, own_uid());
    assert_eq!(peer.pid, std::process::id() as i32);
    rq.respond(Response::from_string("ok")).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("ok"), "{}", answer);

    let tcp = Server::http("127.0.0.1:0").unwrap();
    let addr = tcp.server_addr().to_ip().unwrap();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(tcp.recv().unwrap().peer_credentials().is_none());
}
