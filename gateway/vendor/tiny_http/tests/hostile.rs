//! PATCH tests: each fault listed in PATCHES.md, provoked over a real loopback socket against a real
//! `Server`, named after the fault it guards. No sleeps as synchronisation: reads carry deadlines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Limits, Response, Server};

fn serve(limits: Limits) -> (Arc<Server>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::from_listener_with_limits(listener, None, limits).unwrap();
    (Arc::new(server), addr)
}

/// A server whose one worker answers "ok" to every request without reading its body.
fn serve_ok(limits: Limits) -> (Arc<Server>, SocketAddr) {
    let (server, addr) = serve(limits);
    let s = server.clone();
    thread::spawn(move || {
        while let Ok(rq) = s.recv() {
            let _ = rq.respond(Response::from_string("ok"));
        }
    });
    (server, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Everything the server sends until it closes the connection (panics after 10 s). A reset at
/// the end counts as a close: a server that refuses a request may close with bytes unread.
fn read_to_close(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server does not close the connection: {}", e),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = connect(addr);
    c.write_all(request).unwrap();
    read_to_close(&mut c)
}

fn get_ok(addr: SocketAddr) -> bool {
    exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").ends_with("ok")
}

#[test]
fn huge_content_length_dropped_unread_allocates_nothing() {
    // 2^62 aborted the process (allocation failure), 2^64-1 panicked the dropping thread.
    let (server, addr) = serve(Limits::default());
    for length in ["4611686018427387904", "18446744073709551615"] {
        let mut c = connect(addr);
        write!(
            c,
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\nabc",
            length
        )
        .unwrap();
        // Dropped on this thread: a panic here would fail the test.
        let rq = server.recv().unwrap();
        assert_eq!(rq.body_length(), Some(length.parse().unwrap()));
        drop(rq);
        let answer = read_to_close(&mut c);
        assert!(answer.starts_with("HTTP/1.1 500"), "{}", answer);
    }
    let s = server.clone();
    thread::spawn(move || {
        let rq = s.recv().unwrap();
        rq.respond(Response::from_string("ok")).unwrap();
    });
    assert!(get_ok(addr));
}

#[test]
fn absurd_or_invalid_content_length_is_refused_before_reading() {
    let mut limits = Limits::default();
    limits.max_body_bytes = Some(1 << 20);
    let (_server, addr) = serve_ok(limits);
    for (length, status) in [
        ("4611686018427387904", "413"),
        ("18446744073709551615", "413"),
        ("99999999999999999999999", "413"),
        ("2097152", "413"),
        ("-1", "400"),
        ("12abc", "400"),
        ("", "400"),
    ] {
        let answer = exchange(
            addr,
            format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n").as_bytes(),
        );
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{}: {}",
            length,
            answer
        );
        assert!(answer.contains("Connection: close"), "{}", answer);
    }
    let answer = exchange(
        addr,
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{}", answer);
}

#[test]
fn http2_request_line_answered_505_without_leaking_the_thread() {
    // Upstream deadlocked the connection thread and kept both socket fds; 100 such lines here
    // would be 100 stuck threads. Each must be answered and closed.
    let (_server, addr) = serve_ok(Limits::default());
    let fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    for line in [
        "GET / HTTP/2.0",
        "PRI * HTTP/2.0",
        "GET / HTTP/3.0",
        "GET / HTTP/9.9",
    ] {
        for _ in 0..25 {
            let answer = exchange(addr, format!("{line}\r\n\r\n").as_bytes());
            assert!(answer.starts_with("HTTP/1.1 505"), "{}: {}", line, answer);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds() > before + 4 {
        assert!(
            Instant::now() < deadline,
            "fds stay leaked: {} > {before}",
            fds()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(get_ok(addr));
}

#[test]
fn unbounded_header_answered_431() {
    let (_server, addr) = serve_ok(Limits::default());
    // One endless header line: the server must answer once it has 64 KiB, not buffer the rest.
    let mut c = connect(addr);
    c.write_all(b"GET / HTTP/1.1\r\nX-Big: ").unwrap();
    let filler = vec![b'a'; 1 << 16];
    let mut answer = String::new();
    for _ in 0..64 {
        if c.write_all(&filler).is_err() {
            break; // closed by the server, as it should be
        }
    }
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", answer);

    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let answer = exchange(addr, many.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", answer);
    assert!(get_ok(addr));
}

#[test]
fn stalled_head_times_out() {
    let mut limits = Limits::default();
    limits.head_timeout = Some(Duration::from_millis(300));
    let (_server, addr) = serve_ok(limits);
    let started = Instant::now();
    let answer = exchange(addr, b"GET / HTTP/1.1\r\nHost: a");
    assert!(answer.starts_with("HTTP/1.1 408"), "{}", answer);
    // An idle connection is closed quietly.
    let mut idle = connect(addr);
    assert_eq!(read_to_close(&mut idle), "");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn stalled_body_times_out_the_reader() {
    let mut limits = Limits::default();
    limits.body_idle_timeout = Some(Duration::from_millis(300));
    let (server, addr) = serve(limits);
    let mut c = connect(addr);
    c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\nsome")
        .unwrap();
    let mut rq = server.recv().unwrap();
    let started = Instant::now();
    let mut body = Vec::new();
    let err = rq.as_reader().read_to_end(&mut body).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(body, b"some");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(rq);
    let answer = read_to_close(&mut c);
    assert!(answer.starts_with("HTTP/1.1 500"), "{}", answer);
}

#[test]
fn stalled_buffered_body_holds_no_worker() {
    let mut limits = Limits::default();
    limits.buffer_body_up_to = 4096;
    let (server, addr) = serve(limits);
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut c = connect(addr);
        c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 4000\r\n\r\npartial")
            .unwrap();
        stalled.push(c);
    }
    // None of the stalled requests reaches `recv`; a complete one does.
    let mut c = connect(addr);
    c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone")
        .unwrap();
    let mut rq = server
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let mut body = String::new();
    rq.as_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "done");
}

#[test]
fn long_streamed_answer_is_not_timed_out() {
    let mut limits = Limits::default();
    limits.head_timeout = Some(Duration::from_millis(100));
    limits.body_idle_timeout = Some(Duration::from_millis(100));
    let (server, addr) = serve(limits);
    let s = server.clone();
    thread::spawn(move || {
        let rq = s.recv().unwrap();
        let mut w = rq.into_writer();
        w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap();
        // A slow producer (the gateway streams command output for minutes): each pause is
        // longer than both read timeouts.
        for i in 0..5 {
            thread::sleep(Duration::from_millis(250));
            writeln!(w, "line {}", i).unwrap();
            w.flush().unwrap();
        }
    });
    let answer = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(answer.ends_with("line 4\n"), "{}", answer);
}

#[test]
fn connection_cap_refuses_with_503() {
    let mut limits = Limits::default();
    limits.max_connections = 2;
    limits.head_timeout = None;
    let (server, addr) = serve_ok(limits);
    let first = connect(addr);
    let _second = connect(addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.num_connections() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two connections were not counted"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let answer = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{}", answer);
    assert_eq!(
        server.num_connections(),
        2,
        "a refused connection is not counted"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get_ok(addr) {
        assert!(Instant::now() < deadline, "a slot never came free");
    }
}

#[test]
fn unread_chunked_body_closes_the_connection() {
    let mut limits = Limits::default();
    limits.buffer_body_up_to = 0;
    let (_server, addr) = serve_ok(limits);
    // The chunk carries what would be a second request; it must not be served.
    let smuggled = "GET /second HTTP/1.1\r\n\r\n";
    let request = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n",
        smuggled.len()
    );
    let answer = exchange(addr, request.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{}", answer);
}

#[test]
fn small_unread_body_is_drained_and_the_connection_kept() {
    let (_server, addr) = serve_ok(Limits::default());
    let body = "x".repeat(5000);
    let request = format!(
        "POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{body}GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(addr, request.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{}", answer);
}

#[test]
fn stalled_body_after_100_continue_holds_no_worker() {
    let mut limits = Limits::default();
    limits.buffer_body_up_to = 4096;
    let (server, addr) = serve(limits);
    let mut stalled = connect(addr);
    stalled
        .write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4000\r\n\r\n")
        .unwrap();
    let mut continue_line = [0u8; 25];
    stalled.read_exact(&mut continue_line).unwrap();
    assert_eq!(&continue_line, b"HTTP/1.1 100 Continue\r\n\r\n");
    stalled.write_all(b"partial").unwrap();
    // The stalled request never reaches `recv`; a complete one does.
    let mut c = connect(addr);
    c.write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndone")
        .unwrap();
    let mut rq = server
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let mut body = String::new();
    rq.as_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "done");
}
