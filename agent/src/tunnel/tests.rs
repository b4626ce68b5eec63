//! The tunnel against a real OpenSSH sshd: one sshd per test on 127.0.0.1, in its own temp dir, with
//! the same locked-down key options the gateway writes (`restrict`, `permitlisten`, `permitopen`).

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use burrow_core::identity::Identity;
use rustix::process::Signal;

use super::pump::Timings;
use super::{Stream, StreamReader, StreamWriter, Tunnel, TunnelError};
use support::{
    echo_server, echo_via_forward, free_port, mb_per_s, pattern, round_trip, serve_echo,
    wait_until, Sshd,
};

#[test]
fn handles_are_send() {
    fn send<T: Send>() {}
    send::<Tunnel>();
    send::<Stream>();
    send::<StreamReader>();
    send::<StreamWriter>();
}

#[test]
fn reverse_forward_echoes_bulk_and_concurrent_connections() {
    let sshd = Sshd::start("reverse", free_port());
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    assert_eq!(tunnel.listen_port(), Some(sshd.listen_ports[0]));
    let _server = serve_echo(incoming);
    let port = sshd.listen_ports[0];

    let hello = echo_via_forward(port, Arc::new(b"hello through the tunnel".to_vec()));
    assert_eq!(hello, b"hello through the tunnel");

    // Latency: 32-byte round trips on one connection.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut rtts: Vec<Duration> = (0..500)
        .map(|i| {
            let msg = [i as u8; 32];
            let started = Instant::now();
            conn.write_all(&msg).expect("write");
            let mut back = [0u8; 32];
            conn.read_exact(&mut back).expect("read");
            assert_eq!(back, msg);
            started.elapsed()
        })
        .collect();
    rtts.sort();
    eprintln!(
        "32-byte round trip: p50 {:?}, p99 {:?}",
        rtts[250], rtts[495]
    );
    drop(conn);

    // Bulk, both directions at once: 16 MB out and the same 16 MB echoed back.
    let size = 16 << 20;
    let data = Arc::new(pattern(1, size));
    let started = Instant::now();
    let back = echo_via_forward(port, data.clone());
    let took = started.elapsed();
    assert!(
        back == *data,
        "bulk echo corrupted ({} bytes back)",
        back.len()
    );
    eprintln!(
        "bulk echo: {} MB each way in {took:?} = {:.1} MB/s each way",
        size >> 20,
        mb_per_s(size, took)
    );

    // 20 concurrent connections with distinct data.
    let clients: Vec<_> = (0..20u64)
        .map(|i| {
            thread::spawn(move || {
                let data = Arc::new(pattern(100 + i, 256 * 1024 + i as usize * 1000));
                let back = echo_via_forward(port, data.clone());
                assert!(
                    back == *data,
                    "connection {i} got {} wrong bytes",
                    back.len()
                );
            })
        })
        .collect();
    for client in clients {
        client.join().expect("concurrent client");
    }
    assert!(!tunnel.is_closed());
}

#[test]
fn direct_tcpip_works_while_forwarded_connections_are_busy() {
    let echo_port = echo_server();
    let sshd = Sshd::start("direct", echo_port);
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    let _server = serve_echo(incoming);
    let port = sshd.listen_ports[0];

    // Keep forwarded traffic flowing the whole time.
    let busy: Vec<_> = (0..3u64)
        .map(|i| {
            thread::spawn(move || {
                let data = Arc::new(pattern(7 + i, 4 << 20));
                assert!(echo_via_forward(port, data.clone()) == *data);
            })
        })
        .collect();

    let tunnel = Arc::new(tunnel);
    let directs: Vec<_> = (0..5u64)
        .map(|i| {
            let tunnel = tunnel.clone();
            thread::spawn(move || {
                let stream = tunnel
                    .open_direct("127.0.0.1", echo_port, Duration::from_secs(10))
                    .expect("open direct-tcpip");
                let (reader, writer) = stream.split();
                let data = Arc::new(pattern(50 + i, 2 << 20));
                let back = round_trip(writer, data.clone(), |w| w.close(), reader);
                assert!(
                    back == *data,
                    "direct channel {i} got {} wrong bytes",
                    back.len()
                );
            })
        })
        .collect();
    for t in directs.into_iter().chain(busy) {
        t.join().expect("worker");
    }

    // A destination outside the key's permitopen is refused, and the session survives it.
    let refused = tunnel
        .open_direct("127.0.0.1", sshd.port, Duration::from_secs(10))
        .err()
        .expect("permitopen must refuse this");
    assert!(refused.to_string().contains("refused"), "{refused:#}");
    let mut again = tunnel
        .open_direct("127.0.0.1", echo_port, Duration::from_secs(10))
        .expect("open after a refusal");
    again.write_all(b"ping").expect("write");
    let mut pong = [0u8; 4];
    again.read_exact(&mut pong).expect("read");
    assert_eq!(&pong, b"ping");
}

#[test]
fn channels_are_closed_whoever_finishes_first() {
    let echo_port = echo_server();
    let sshd = Sshd::start("churn", echo_port);
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    let port = sshd.listen_ports[0];
    let wait = Duration::from_secs(10);

    // The agent answers and drops its stream without waiting for the gateway's EOF.
    for i in 0..50u8 {
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("client");
        client.write_all(&[i]).expect("client write");
        let mut stream = incoming.recv_timeout(wait).expect("stream");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).expect("agent read");
        stream.write_all(&[byte[0], 0xAA]).expect("agent write");
        drop(stream);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).expect("client read to EOF");
        assert_eq!(answer, [i, 0xAA]);
    }

    // The gateway side hangs up while the agent keeps writing: the writer gets BrokenPipe.
    let client = TcpStream::connect(("127.0.0.1", port)).expect("client");
    let mut stream = incoming.recv_timeout(wait).expect("stream");
    drop(client);
    let deadline = Instant::now() + wait;
    let err = loop {
        match stream.write_all(&[0u8; 4096]) {
            Ok(()) => assert!(Instant::now() < deadline, "writes never failed"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(stream.read(&mut [0u8; 16]).expect("EOF"), 0);
    drop(stream);

    // Direct channels: used and dropped, and dropped unused.
    for i in 0..30u8 {
        let mut stream = tunnel
            .open_direct("127.0.0.1", echo_port, wait)
            .expect("open");
        if i % 2 == 0 {
            stream.write_all(&[i; 100]).expect("write");
            let mut back = [0u8; 100];
            stream.read_exact(&mut back).expect("read");
            assert_eq!(back, [i; 100]);
        }
    }

    let all_closed = wait_until(wait, || tunnel.shared.channels.load(Ordering::Relaxed) == 0);
    assert!(
        all_closed,
        "{} channels still open",
        tunnel.shared.channels.load(Ordering::Relaxed)
    );
    assert!(!tunnel.is_closed());
}

#[test]
fn enrollment_session_has_no_forward_but_opens_channels() {
    let echo_port = echo_server();
    let sshd = Sshd::start("enroll", echo_port);
    let mut cfg = sshd.config();
    cfg.listen_ports.clear();
    let (tunnel, _incoming) = Tunnel::connect(&cfg).expect("connect");
    assert_eq!(tunnel.listen_port(), None);
    let mut stream = tunnel
        .open_direct("127.0.0.1", echo_port, Duration::from_secs(10))
        .expect("open");
    stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream.write_all(b"enroll me").expect("write");
    let mut back = [0u8; 9];
    stream.read_exact(&mut back).expect("read");
    assert_eq!(&back, b"enroll me");

    // With nothing to read the read times out rather than hanging.
    stream.set_read_timeout(Some(Duration::from_millis(100)));
    let err = stream.read(&mut back).expect_err("no data is pending");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[test]
fn idle_session_answers_server_keepalives() {
    // sshd drops a client that leaves its ClientAlive requests unanswered (after ~4 s with these
    // settings). With no listener and no channel, only the pump's drain of a readable socket gets
    // libssh2 to answer them; without it the pump would also spin on the readable socket.
    let echo_port = echo_server();
    let sshd = Sshd::start_with(
        "clientalive",
        echo_port,
        "ClientAliveInterval 1\nClientAliveCountMax 1\n",
    );
    let mut cfg = sshd.config();
    cfg.listen_ports.clear();
    let (tunnel, _incoming) = Tunnel::connect(&cfg).expect("connect");
    let reason = tunnel.wait_closed(Duration::from_secs(7));
    assert!(reason.is_none(), "{reason:?}\n{}", sshd.log());
    let mut stream = tunnel
        .open_direct("127.0.0.1", echo_port, Duration::from_secs(5))
        .expect("still usable");
    stream.write_all(b"alive").expect("write");
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).expect("read");
    assert_eq!(&back, b"alive");
}

#[test]
fn wrong_host_key_pin_is_refused_before_auth() {
    let sshd = Sshd::start("pin", free_port());
    let mut cfg = sshd.config();
    cfg.host_key_pin = Identity::generate("someone else").public().fingerprint();
    match Tunnel::connect(&cfg) {
        Err(err @ TunnelError::HostKeyMismatch { .. }) => {
            let text = err.to_string();
            assert!(text.contains(&sshd.host_fingerprint), "{text}");
            assert!(text.contains("does not match the pinned"), "{text}");
        }
        Err(other) => panic!("expected HostKeyMismatch, got {other}"),
        Ok(_) => panic!("connected despite a wrong pin"),
    }
    // Refused before auth: sshd never saw a public key offered.
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn unknown_key_is_auth_rejected() {
    let sshd = Sshd::start("auth", free_port());
    let mut cfg = sshd.config();
    let stranger = Identity::generate("stranger");
    cfg.private_key_pem = stranger.to_openssh_pem();
    cfg.public_key_line = stranger.public_line();
    match Tunnel::connect(&cfg) {
        Err(TunnelError::AuthRejected(why)) => {
            assert!(why.contains(&stranger.public().fingerprint()), "{why}")
        }
        Err(other) => panic!("expected AuthRejected, got {other}"),
        Ok(_) => panic!("an unknown key was accepted"),
    }
}

#[test]
fn taken_first_port_falls_back_to_the_second() {
    let sshd = Sshd::start("fallback", free_port());
    let _squatter = TcpListener::bind(("127.0.0.1", sshd.listen_ports[0])).expect("hold P1");
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    assert_eq!(tunnel.listen_port(), Some(sshd.listen_ports[1]));
    let _server = serve_echo(incoming);
    let back = echo_via_forward(sshd.listen_ports[1], Arc::new(b"second port".to_vec()));
    assert_eq!(back, b"second port");

    // Both taken (P2 now by the live session, as a stale session would): a refusal naming the ports.
    match Tunnel::connect(&sshd.config()) {
        Err(err @ TunnelError::ListenRefused(_)) => {
            let text = err.to_string();
            assert!(text.contains(&sshd.listen_ports[0].to_string()), "{text}");
            assert!(text.contains(&sshd.listen_ports[1].to_string()), "{text}");
        }
        Err(other) => panic!("expected ListenRefused, got {other}"),
        Ok(_) => panic!("listened on a taken port"),
    }
    assert!(!tunnel.is_closed(), "the first tunnel is unaffected");
}

#[test]
fn killing_sshd_closes_the_tunnel_and_its_streams() {
    let echo_port = echo_server();
    let mut sshd = Sshd::start("kill", echo_port);
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    let mut client = TcpStream::connect(("127.0.0.1", sshd.listen_ports[0])).expect("client");
    client.write_all(b"x").expect("client write");
    let mut forwarded = incoming
        .recv_timeout(Duration::from_secs(10))
        .expect("forwarded stream");
    let mut byte = [0u8; 1];
    forwarded.read_exact(&mut byte).expect("first byte");
    let mut direct = tunnel
        .open_direct("127.0.0.1", echo_port, Duration::from_secs(10))
        .expect("direct");
    assert!(tunnel.wait_closed(Duration::from_millis(50)).is_none());

    let killed = Instant::now();
    sshd.kill_all();
    let reason = tunnel
        .wait_closed(Duration::from_secs(5))
        .expect("the tunnel noticed sshd dying");
    eprintln!("noticed in {:?}: {reason}", killed.elapsed());
    assert!(tunnel.is_closed());
    assert!(reason.contains(&sshd.port.to_string()), "{reason}");

    for stream in [&mut forwarded, &mut direct] {
        stream.set_read_timeout(Some(Duration::from_secs(5)));
        assert_eq!(stream.read(&mut byte).expect("EOF, not an error"), 0);
        let err = stream.write_all(b"more").expect_err("writes fail");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
    assert!(incoming.recv().is_err(), "the incoming queue is closed");
    let err = tunnel
        .open_direct("127.0.0.1", echo_port, Duration::from_secs(1))
        .err()
        .expect("no opens on a dead session");
    assert!(
        err.to_string().contains("sshd") || err.to_string().contains("lost"),
        "{err}"
    );
}

#[test]
fn unanswered_probe_declares_a_silent_link_dead() {
    let sshd = Sshd::start("probe", free_port());
    let timings = Timings {
        probe_idle: Duration::from_millis(100),
        probe_timeout: Duration::from_secs(1),
        ..Timings::default()
    };
    let (tunnel, _incoming) = Tunnel::connect_with(&sshd.config(), timings).expect("connect");
    // Probes are answered while sshd is healthy, and they do not disturb the session.
    assert!(wait_until(Duration::from_secs(10), || {
        tunnel.shared.probes.load(Ordering::Relaxed) >= 3
    }));
    assert!(!tunnel.is_closed(), "{:?}", tunnel.close_reason());

    // A frozen sshd keeps the TCP connection up but answers nothing, like a NAT that dropped the flow.
    sshd.signal_sessions(Signal::STOP);
    let reason = tunnel
        .wait_closed(Duration::from_secs(10))
        .expect("a silent link is declared dead");
    assert!(reason.contains("did not answer"), "{reason}");
    sshd.signal_sessions(Signal::CONT);
}

/// Issue 8: a cut network or a frozen sshd tears the session down within `--dead-after` (here 2 s),
/// so the agent redials; a healthy idle session is probed and kept meanwhile.
#[test]
fn frozen_sshd_is_declared_dead_within_dead_after() {
    let sshd = Sshd::start("dead-after", free_port());
    let dead_after = Duration::from_secs(2);
    let (tunnel, _incoming) = Tunnel::connect_within(&sshd.config(), dead_after).expect("connect");
    // Idle for longer than the bound: probes (every 0.6 s of silence) are answered, nothing drops.
    assert!(wait_until(Duration::from_secs(10), || {
        tunnel.shared.probes.load(Ordering::Relaxed) >= 4
    }));
    assert!(!tunnel.is_closed(), "{:?}", tunnel.close_reason());

    sshd.signal_sessions(Signal::STOP);
    let frozen = Instant::now();
    let reason = tunnel
        .wait_closed(Duration::from_secs(10))
        .expect("a frozen sshd is declared dead");
    let took = frozen.elapsed();
    sshd.signal_sessions(Signal::CONT);
    assert!(reason.contains("did not answer"), "{reason}");
    assert!(
        took <= dead_after + Duration::from_millis(300),
        "took {took:?}"
    );
}

/// The default timings keep issue 8's bound (20 s) with the probe due after the service's ping
/// (whose answer usually makes the probe unneeded).
#[test]
fn default_timings_find_a_dead_link_within_twenty_seconds() {
    let t = Timings::default();
    assert!(
        t.probe_idle + t.probe_timeout + t.tick <= Duration::from_secs(20),
        "{t:?}"
    );
    assert!(t.open_timeout <= Duration::from_secs(20), "{t:?}");
    assert!(
        t.probe_idle > crate::service::Liveness::default().ping_after,
        "{t:?}"
    );
}

#[test]
fn slow_reader_stalls_the_sender_instead_of_buffering() {
    let sshd = Sshd::start("backpressure", free_port());
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    let size = 64 << 20;
    let data = Arc::new(pattern(9, size));
    let written = Arc::new(AtomicU64::new(0));
    let client = TcpStream::connect(("127.0.0.1", sshd.listen_ports[0])).expect("client");
    let writer = {
        let (data, written) = (data.clone(), written.clone());
        let mut client = client.try_clone().expect("clone");
        thread::spawn(move || {
            for chunk in data.chunks(64 * 1024) {
                client.write_all(chunk).expect("client write");
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            client.shutdown(Shutdown::Write).expect("shutdown");
        })
    };
    let mut stream = incoming
        .recv_timeout(Duration::from_secs(10))
        .expect("forwarded stream");
    // Nobody reads: the writer must come to a stop well short of 64 MB (socket buffers + SSH window +
    // the stream's queue), instead of the tunnel buffering everything.
    let mut last = u64::MAX;
    let stalled = wait_until(Duration::from_secs(20), || {
        thread::sleep(Duration::from_millis(300));
        let now = written.load(Ordering::Relaxed);
        let still = now == last;
        last = now;
        still
    });
    let buffered = written.load(Ordering::Relaxed);
    eprintln!("sender stalled after {} KiB", buffered >> 10);
    assert!(
        stalled && buffered < 24 << 20,
        "sender never stalled ({buffered} bytes)"
    );

    let mut got = Vec::with_capacity(size);
    stream.read_to_end(&mut got).expect("read all");
    writer.join().expect("writer");
    assert!(
        got == *data,
        "data corrupted after the stall ({} bytes)",
        got.len()
    );
    client.shutdown(Shutdown::Both).ok();
    assert!(!tunnel.is_closed());
}

#[test]
fn shutdown_closes_forwarded_connections() {
    let sshd = Sshd::start("shutdown", free_port());
    let (tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    let _server = serve_echo(incoming);
    let mut client = TcpStream::connect(("127.0.0.1", sshd.listen_ports[0])).expect("client");
    client.write_all(b"ok?").expect("write");
    let mut back = [0u8; 3];
    client.read_exact(&mut back).expect("echo");
    tunnel.shutdown();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let eof = client.read_to_end(&mut rest);
    assert!(eof.is_ok() || eof.is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset));
    // sshd released the forward: a new session can bind the same first port.
    let (again, _incoming) = Tunnel::connect(&sshd.config()).expect("reconnect");
    assert!(
        again.listen_port().is_some(),
        "reconnect listens on {:?}",
        again.listen_port()
    );
}

/// Throughput one way at a time, 100 MB each; run with `cargo test --release -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_one_way_throughput() {
    let sshd = Sshd::start("bench", free_port());
    let (_tunnel, incoming) = Tunnel::connect(&sshd.config()).expect("connect");
    let size = 100 << 20;
    let block = Arc::new(pattern(3, 1 << 20));

    // Gateway -> agent: the client writes, the agent's stream reads and counts.
    let client = TcpStream::connect(("127.0.0.1", sshd.listen_ports[0])).expect("client");
    let mut stream = incoming.recv().expect("stream");
    let started = Instant::now();
    let writer = {
        let block = block.clone();
        let mut client = client.try_clone().expect("clone");
        thread::spawn(move || {
            for _ in 0..100 {
                client.write_all(&block).expect("write");
            }
            client.shutdown(Shutdown::Write).expect("shutdown");
        })
    };
    let got = io::copy(&mut stream, &mut io::sink()).expect("read");
    let took = started.elapsed();
    writer.join().expect("writer");
    assert_eq!(got as usize, size);
    eprintln!("gateway -> agent: {:.0} MB/s", mb_per_s(size, took));
    drop((client, stream));

    // Agent -> gateway: the agent's stream writes, the client reads and counts.
    let mut client = TcpStream::connect(("127.0.0.1", sshd.listen_ports[0])).expect("client");
    let stream = incoming.recv().expect("stream");
    let started = Instant::now();
    let writer = thread::spawn(move || {
        let (_reader, mut writer) = stream.split();
        for _ in 0..100 {
            writer.write_all(&block).expect("write");
        }
        writer.close();
    });
    let got = io::copy(&mut client, &mut io::sink()).expect("read");
    let took = started.elapsed();
    writer.join().expect("writer");
    assert_eq!(got as usize, size);
    eprintln!("agent -> gateway: {:.0} MB/s", mb_per_s(size, took));
}
