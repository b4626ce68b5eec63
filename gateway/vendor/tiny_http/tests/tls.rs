//! PATCH(rustls-0.23) tests: HTTPS over rustls 0.23 against a real `Server` on a loopback socket,
//! with the test CA and server certificate in `tests/tls/` (EC P-256, 127.0.0.1 and localhost,
//! valid for 100 years; test-only keys). No sleeps as synchronisation: reads carry deadlines.
#![cfg(feature = "ssl-rustls")]

use std::convert::TryFrom;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tiny_http::{Limits, Response, Server, SslConfig};

const CA: &[u8] = include_bytes!("tls/ca.pem");
const CERT: &[u8] = include_bytes!("tls/server.pem");
const KEY: &[u8] = include_bytes!("tls/server.key");

fn ssl() -> SslConfig {
    SslConfig {
        certificate: CERT.to_vec(),
        private_key: KEY.to_vec(),
    }
}

/// An HTTPS server whose one worker answers "ok" to every request.
fn serve_ok(limits: Limits) -> (Arc<Server>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        Arc::new(Server::from_listener_with_limits(listener, Some(ssl()), limits).unwrap());
    let s = server.clone();
    thread::spawn(move || {
        while let Ok(rq) = s.recv() {
            let _ = rq.respond(Response::from_string("ok"));
        }
    });
    (server, addr)
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// A GET over a verified TLS session: the body of the answer.
fn https_get(addr: SocketAddr) -> String {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(client_config(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, connect(addr));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // A peer that closes without close_notify: what was read stands.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the answer: {}", e),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{}", text);
    text.rsplit("\r\n\r\n").next().unwrap().to_string()
}

/// Waits until the server closes `c` (EOF or reset), within `limit`.
fn closed_within(c: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
            Err(e) => panic!(
                "the server kept the connection for {:?}: {}",
                t.elapsed(),
                e
            ),
        }
    }
}

#[test]
fn tls_serves_a_verified_request() {
    let (_server, addr) = serve_ok(Limits::default());
    assert_eq!(https_get(addr), "ok");
}

/// RUSTSEC-2024-0336: with rustls 0.20 a `close_notify` alert that arrives while the server is
/// still in its handshake made `complete_io` loop forever: the connection thread spun at 100 %
/// CPU and never closed the socket. Now the server ends the connection and goes on serving.
#[test]
fn close_notify_during_the_handshake_ends_the_connection_instead_of_spinning() {
    let (_server, addr) = serve_ok(Limits::default());
    for _ in 0..3 {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut hello = rustls::ClientConnection::new(client_config(), name).unwrap();
        let mut c = connect(addr);
        // The ClientHello, as a real client sends it…
        let mut first = Vec::new();
        hello.write_tls(&mut first).unwrap();
        c.write_all(&first).unwrap();
        // …then, before the handshake is done, a plaintext alert record: warning, close_notify.
        c.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00])
            .unwrap();
        let took = closed_within(&mut c, Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "closed after {:?}", took);
    }
    assert_eq!(https_get(addr), "ok", "the server goes on serving");
}

/// PATCH(read-timeouts) for TLS: a client that opens a connection and sends half a ClientHello
/// is dropped by the head timeout, like a plain one that stalls in its request head.
#[test]
fn a_stalled_tls_handshake_is_dropped_by_the_head_timeout() {
    let mut limits = Limits::default();
    limits.head_timeout = Some(Duration::from_secs(1));
    let (_server, addr) = serve_ok(limits);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut hello = rustls::ClientConnection::new(client_config(), name).unwrap();
    let mut first = Vec::new();
    hello.write_tls(&mut first).unwrap();
    let mut c = connect(addr);
    c.write_all(&first[..first.len() / 2]).unwrap();
    let took = closed_within(&mut c, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "closed after {:?}", took);
    assert_eq!(https_get(addr), "ok");
}

/// A certificate or key file that is not one is an error from the constructor, not a panic.
#[test]
fn a_bad_key_or_certificate_is_an_error_not_a_panic() {
    for (certificate, private_key) in [
        (CERT.to_vec(), b"not a key".to_vec()),
        (b"not a certificate".to_vec(), KEY.to_vec()),
        (CERT.to_vec(), CERT.to_vec()),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ssl = SslConfig {
            certificate,
            private_key,
        };
        assert!(Server::from_listener_with_limits(listener, Some(ssl), Limits::default()).is_err());
    }
}
