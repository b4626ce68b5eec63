//! Tests of the command service over an in-memory twin of the tunnel (`UnixStream::pair`), with a
//! test gateway that runs the real handshake. The harness ([`support`]) is shared with the exec, jobs
//! and files tests.

use super::*;
use burrow_core::protocol::{stream, write_plain, ExecSpec};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub(crate) mod support;
pub(crate) use support::*;

#[test]
fn pinned_gateway_is_served() {
    let mut gateway = TestGateway::start();
    gateway.send(&Message::Ping(7));
    assert_eq!(gateway.recv(), Message::Pong(7));
    gateway.finish().unwrap();
}

#[test]
fn other_gateway_key_is_refused_and_runs_nothing() {
    let marker = std::env::temp_dir().join(format!(
        "burrow-agent-refused-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let (mut stream, agent, _dir) = spawn_agent(Identity::generate("pinned").public(), 8);
    let impostor = Identity::generate("impostor");
    assert!(handshake(&mut stream, &impostor, Role::Gateway, |_| true).is_err());
    // Whatever it sends next must not run.
    let _ = write_plain(
        &mut stream,
        &Message::Exec {
            id: 1,
            job: "j".into(),
            spec: command(&format!("touch {}", marker.display())),
        },
    );
    let err = agent.join().unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("handshake"), "{err:#}");
    assert!(!marker.exists());
}

/// The connection ends; its job runs on detached, up to its own timeout.
#[test]
fn garbage_after_handshake_ends_the_connection_not_its_jobs() {
    let mut gateway = TestGateway::start();
    gateway.exec(
        1,
        ExecSpec {
            timeout_s: 2,
            ..command("echo $$; sleep 100")
        },
    );
    let (group, _) = first_number(&mut gateway, 1);
    // A length prefix far beyond MAX_FRAME.
    gateway.send_raw(&[0xff; 16]);
    let err = gateway.finish().unwrap_err();
    assert!(
        format!("{err:#}").contains("failed authentication"),
        "{err:#}"
    );
    assert!(
        !live_members(group).is_empty(),
        "killed with its connection"
    );
    assert!(wait_until(Duration::from_secs(8), || live_members(group).is_empty()));
}

#[test]
fn malformed_exec_payload_is_a_protocol_error() {
    let mut gateway = TestGateway::start();
    // kind 3 (Exec), id 1, empty job id, payload "{": sealed, so it gets as far as the decoder.
    gateway.send_body(&[3, 0, 0, 0, 1, 0, b'{']);
    let err = gateway.finish().unwrap_err();
    assert!(format!("{err:#}").contains("bad Exec payload"), "{err:#}");
}

#[test]
fn second_hello_is_a_protocol_error() {
    let mut gateway = TestGateway::start();
    gateway.send(&Message::Hello {
        version: burrow_core::protocol::VERSION,
        role: Role::Gateway,
        key: [1; 32],
        ephemeral: [3; 32],
        nonce: [2; 32],
    });
    // The agent hangs up: the gateway end sees the stream close.
    assert!(matches!(
        gateway.opener.read_message(&mut gateway.stream),
        Err(burrow_core::Error::Closed)
    ));
    let err = gateway.finish().unwrap_err();
    assert!(format!("{err:#}").contains("unexpected Hello"), "{err:#}");
}

/// Regression (issue 7): a dropped connection killed its commands; now they run on detached until
/// their own timeout.
#[test]
fn closing_the_connection_detaches_its_jobs_which_run_until_their_timeout() {
    let mut gateway = TestGateway::start();
    gateway.exec(
        1,
        ExecSpec {
            timeout_s: 2,
            ..command("echo $$; sleep 100")
        },
    );
    let (group, _) = first_number(&mut gateway, 1);
    let closed = Instant::now();
    gateway.finish().unwrap();
    assert!(
        !live_members(group).is_empty(),
        "killed with its connection"
    );
    assert!(wait_until(Duration::from_secs(8), || live_members(group).is_empty()));
    assert!(
        closed.elapsed() >= Duration::from_secs(1),
        "{:?}",
        closed.elapsed()
    );
}

#[test]
fn chatty_command_does_not_block_a_quick_one() {
    let mut gateway = TestGateway::start();
    gateway.exec(1, command("yes"));
    let mut chatty = 0usize;
    let mut quick: Option<Outcome> = None;
    let started = Instant::now();
    // Act like a real gateway: hand every byte of `yes` on at once, so it floods the connection.
    while quick.as_ref().is_none_or(|q| q.status.is_none()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "echo hi never finished"
        );
        match gateway.recv() {
            Message::Data {
                id: 1,
                stream: stream::STDOUT,
                data,
            } => {
                chatty += data.len();
                let bytes = data.len() as u32;
                gateway.send(&Message::Credit {
                    id: 1,
                    stream: stream::STDOUT,
                    bytes,
                });
                if quick.is_none() && chatty > 1_000_000 {
                    gateway.exec(2, command("echo hi"));
                    quick = Some(Outcome::default());
                }
            }
            Message::Data {
                id: 2,
                stream: stream::STDOUT,
                data,
            } => quick.as_mut().unwrap().stdout.extend(data),
            Message::Exit { id: 2, status } => quick.as_mut().unwrap().status = Some(status),
            other => panic!("unexpected {other:?}"),
        }
    }
    let quick = quick.unwrap();
    assert_eq!(quick.stdout, b"hi\n");
    assert_eq!(quick.exit().exit_code, Some(0));
    gateway.send(&Message::Cancel { id: 1 });
    let rest = gateway.collect(1);
    assert_eq!(rest.exit().signal, Some(9));
}

#[test]
fn refusals_are_failed_frames() {
    let mut gateway = TestGateway::start_with(1);
    gateway.exec(0, command("true"));
    assert!(
        matches!(gateway.recv(), Message::Failed { id: 0, message } if message.contains("reserved"))
    );
    gateway.exec(1, command("echo $$; sleep 100"));
    first_number(&mut gateway, 1);
    gateway.exec(1, command("true"));
    assert!(
        matches!(gateway.recv(), Message::Failed { id: 1, message } if message.contains("already running"))
    );
    gateway.exec(2, command("true"));
    assert!(
        matches!(gateway.recv(), Message::Failed { id: 2, message } if message.contains("too many jobs running"))
    );
    // Credit and Cancel for unknown ids cross finished requests on the wire: ignored.
    gateway.send(&Message::Credit {
        id: 9,
        stream: stream::STDOUT,
        bytes: 1,
    });
    gateway.send(&Message::Cancel { id: 9 });
    gateway.send(&Message::Ping(1));
    assert_eq!(gateway.recv(), Message::Pong(1));
    gateway.send(&Message::Cancel { id: 1 });
    assert_eq!(gateway.collect(1).exit().signal, Some(9));
    // The slot is free again, and the id may be reused.
    assert_eq!(gateway.run(command("echo again")).stdout, b"again\n");
}

/// Copies `from` to `to` until either end closes; while `drop` is set, reads and discards instead.
fn relay_one_way(
    mut from: UnixStream,
    mut to: UnixStream,
    drop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !drop.load(Ordering::Acquire) && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    })
}

/// A relay that passes the agent's output but stalls the gateway's frames (its `Cancel`, `Credit`,
/// `Ping`s) must not keep the connection up: the agent drops it within its liveness bound
/// (`dead_after + tick`); the command runs on detached up to its own timeout.
#[test]
fn relay_dropping_the_gateways_frames_is_cut_within_the_liveness_bound() {
    let liveness = Liveness {
        ping_after: Duration::from_millis(300),
        dead_after: Duration::from_secs(1),
        tick: Duration::from_millis(100),
        heartbeat: Duration::from_secs(30),
    };
    let gateway = Identity::generate("gateway");
    let (agent_side, agent, dir) = spawn_agent_with(gateway.public(), 8, liveness, None);
    let (mut gw, relay_side) = UnixStream::pair().unwrap();
    gw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let stall = Arc::new(AtomicBool::new(false));
    let to_agent = relay_one_way(
        relay_side.try_clone().unwrap(),
        agent_side.try_clone().unwrap(),
        stall.clone(),
    );
    let to_gateway = relay_one_way(agent_side, relay_side, Arc::new(AtomicBool::new(false)));

    let channel = handshake(&mut gw, &gateway, Role::Gateway, |_| true).unwrap();
    let mut g = TestGateway {
        stream: gw,
        sealer: channel.sealer,
        opener: channel.opener,
        agent: Some(agent),
        _node: Some(dir),
    };
    g.exec(
        1,
        ExecSpec {
            timeout_s: 3,
            ..command("echo $$; sleep 100")
        },
    );
    let (group, _) = first_number(&mut g, 1);
    stall.store(true, Ordering::Release);
    let stalled = Instant::now();
    g.send(&Message::Cancel { id: 1 });
    // The agent's own pings still reach the gateway: the path looks alive from this side.
    assert!(matches!(g.recv_any(), Message::Ping(_)));
    let agent = g.agent.take().unwrap();
    let err = agent.join().unwrap().unwrap_err();
    let took = stalled.elapsed();
    assert!(format!("{err:#}").contains("liveness bound"), "{err:#}");
    assert!(
        took < liveness.dead_after + liveness.tick + Duration::from_secs(1),
        "cut after {took:?}"
    );
    assert!(wait_until(Duration::from_secs(8), || live_members(group).is_empty()));
    drop(g);
    to_agent.join().unwrap();
    to_gateway.join().unwrap();
}

/// Idle or trickling connections that never finish the handshake are dropped after
/// `HANDSHAKE_TIMEOUT`, so they cannot hold a thread (and a slot) forever.
#[test]
fn unfinished_handshake_is_dropped_after_the_timeout() {
    let (silent, silent_agent, _dir1) = spawn_agent(Identity::generate("gateway").public(), 8);
    let (mut trickle, trickle_agent, _dir2) =
        spawn_agent(Identity::generate("gateway").public(), 8);
    let started = Instant::now();
    let trickler = thread::spawn(move || {
        // One byte of a Hello every 200 ms: each read is quick, the whole never completes in time.
        for b in [0u8, 0, 0, 99, 1, 0, 0, 0, 0, 0, 2].iter().cycle().take(60) {
            if trickle.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
    for agent in [silent_agent, trickle_agent] {
        let err = agent.join().unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("handshake"), "{err:#}");
    }
    let took = started.elapsed();
    assert!(
        took >= HANDSHAKE_TIMEOUT && took < HANDSHAKE_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    drop(silent);
    trickler.join().unwrap();
}

#[test]
fn handshake_slots_cap_unauthenticated_connections() {
    let slots = HandshakeSlots::new(MAX_UNAUTHENTICATED);
    let taken: Vec<Slot> = (0..MAX_UNAUTHENTICATED)
        .map(|_| slots.try_take().expect("a free slot"))
        .collect();
    assert!(slots.try_take().is_none(), "one more than the cap");
    drop(taken.into_iter().next());
    assert!(
        slots.try_take().is_some(),
        "a slot given back is free again"
    );
}

/// The gateway may end the link with a reason; the agent logs it and ends the connection cleanly.
#[test]
fn bye_ends_the_connection() {
    let mut gateway = TestGateway::start();
    gateway.send(&Message::Bye {
        code: bye::REVOKED.into(),
        reason: "revoked by the test".into(),
    });
    let agent = gateway.agent.take().unwrap();
    agent.join().unwrap().unwrap();
}

/// Revoked or rejected, the node is cut off: its running jobs are killed before the connection ends
/// (a shutdown `Bye` leaves them running: the gateway comes back for them).
#[test]
fn bye_revoked_or_rejected_cancels_running_jobs_and_shutdown_does_not() {
    for code in [bye::REVOKED, bye::REJECTED, bye::SHUTDOWN] {
        let mut gateway = TestGateway::start();
        gateway.exec(
            1,
            ExecSpec {
                timeout_s: 3,
                ..command("echo $$; sleep 100")
            },
        );
        let (group, _) = first_number(&mut gateway, 1);
        gateway.send(&Message::Bye {
            code: code.into(),
            reason: "test".into(),
        });
        let agent = gateway.agent.take().unwrap();
        agent.join().unwrap().unwrap();
        if code == bye::SHUTDOWN {
            assert!(!live_members(group).is_empty(), "{code}: killed");
        } else {
            assert!(live_members(group).is_empty(), "{code}: still running");
        }
        assert!(wait_until(Duration::from_secs(8), || live_members(group).is_empty()));
    }
}

/// Heartbeats ride the authenticated connection: one at once, then one per interval.
#[test]
fn heartbeats_go_out_on_the_connection_at_once_and_then_periodically() {
    let liveness = Liveness {
        tick: Duration::from_millis(50),
        heartbeat: Duration::from_millis(300),
        ..Liveness::default()
    };
    let beat = || burrow_core::api::Heartbeat {
        version: "test".into(),
        metrics: burrow_core::api::Metrics {
            uptime_s: 42,
            ..Default::default()
        },
        ..Default::default()
    };
    let gateway = Identity::generate("gateway");
    let (mut stream, agent, dir) =
        spawn_agent_with(gateway.public(), 8, liveness, Some(Box::new(beat)));
    let channel = handshake(&mut stream, &gateway, Role::Gateway, |_| true).unwrap();
    let mut g = TestGateway {
        stream,
        sealer: channel.sealer,
        opener: channel.opener,
        agent: Some(agent),
        _node: Some(dir),
    };
    let connected = Instant::now();
    // The service fills in the concurrency limit and what runs.
    let expected = Message::Heartbeat(burrow_core::api::Heartbeat {
        max_jobs: 8,
        running: 0,
        ..beat()
    });
    assert_eq!(g.recv(), expected);
    assert!(
        connected.elapsed() < Duration::from_millis(250),
        "{:?}",
        connected.elapsed()
    );
    assert_eq!(g.recv(), expected);
    let second = connected.elapsed();
    // 300 ms less its jitter.
    assert!(second >= Duration::from_millis(270), "{second:?}");
    g.finish().unwrap();
}

/// Each interval is drawn anew within ±10 % (a fleet started at once spreads out), and a beat
/// announces the longest one (rounded up to a second) so the gateway knows when one is late.
#[test]
fn heartbeat_intervals_are_jittered_within_ten_percent() {
    let base = Duration::from_secs(30);
    assert_eq!(jittered(base, 0.0), Duration::from_secs(27));
    assert_eq!(jittered(base, 0.5), base);
    assert!(jittered(base, 0.999_999) < Duration::from_secs(33));
    assert_eq!(jittered(base, 7.0), Duration::from_secs(33), "clamped");
    let live = Liveness::new(Duration::from_secs(20), base);
    let draws: Vec<f64> = (0..2000)
        .map(|_| live.next_beat().as_secs_f64() / 30.0)
        .collect();
    let (min, max) = draws
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), d| (lo.min(*d), hi.max(*d)));
    assert!(min >= 0.9 && max < 1.1, "{min}..{max}");
    assert!(min < 0.92 && max > 1.08, "not spread: {min}..{max}");
    assert_eq!(live.latest_beat_s(), 33);
    assert_eq!(
        Liveness::new(live.dead_after, Duration::from_secs(1)).latest_beat_s(),
        2
    );
    assert_eq!(
        Liveness::new(live.dead_after, Duration::from_secs(10)).latest_beat_s(),
        11
    );
}

/// Issue 8: a dead gateway is noticed within `--dead-after` (20 s by default): pinged after a
/// quarter of it, and again every quarter, then dropped at the bound itself (not a tick later).
#[test]
fn silent_gateway_is_dropped_within_dead_after() {
    let defaults = Liveness::default();
    assert_eq!(
        (defaults.ping_after, defaults.dead_after),
        (Duration::from_secs(5), Duration::from_secs(20))
    );
    let liveness = Liveness::new(Duration::from_secs(1), Duration::from_secs(30));
    let gateway = Identity::generate("gateway");
    let (mut stream, agent, _dir) = spawn_agent_with(gateway.public(), 8, liveness, None);
    let channel = handshake(&mut stream, &gateway, Role::Gateway, |_| true).unwrap();
    let quiet = Instant::now();
    let mut opener = channel.opener;
    let mut pings = Vec::new();
    // A gateway that reads but never answers (frozen, or its frames lost on the way).
    loop {
        match opener.read_message(&mut stream) {
            Ok(Message::Ping(_)) => pings.push(quiet.elapsed()),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    let err = agent.join().unwrap().unwrap_err();
    let took = quiet.elapsed();
    assert!(format!("{err:#}").contains("liveness bound"), "{err:#}");
    assert!(
        took >= liveness.dead_after && took < liveness.dead_after + Duration::from_millis(300),
        "dropped after {took:?}"
    );
    assert!(pings.len() >= 3, "{pings:?}");
    assert!(pings[0] >= liveness.ping_after, "{pings:?}");
}

/// Regression (issue 8, "no false alarms on a slow Pi Zero"): sampling a beat's metrics used to run
/// on the reading thread, so a slow sample (a busy SD card, a CPU held to 5 %) held up the answer
/// to the gateway's ping. Beats are now made on their own thread: a ping is answered while a beat
/// is stuck.
#[test]
fn a_slow_heartbeat_sample_does_not_delay_pongs() {
    let (release, stuck) = crossbeam_channel::bounded::<()>(0);
    let beat: HeartbeatSource = Box::new(move || {
        let _ = stuck.recv();
        burrow_core::api::Heartbeat::default()
    });
    let gateway = Identity::generate("gateway");
    let (mut stream, agent, dir) =
        spawn_agent_with(gateway.public(), 8, Liveness::default(), Some(beat));
    let channel = handshake(&mut stream, &gateway, Role::Gateway, |_| true).unwrap();
    let mut g = TestGateway {
        stream,
        sealer: channel.sealer,
        opener: channel.opener,
        agent: Some(agent),
        _node: Some(dir),
    };
    g.send(&Message::Ping(42));
    let answer = g.recv_within(Duration::from_secs(2));
    assert_eq!(answer, Some(Message::Pong(42)));
    drop(release);
    assert!(matches!(g.recv(), Message::Heartbeat(_)));
    g.finish().unwrap();
}
