//! The health module with a real bus and a fake agent on a real socket (no sshd): a node that reports
//! a fault, or whose clock is off, is `error` and takes no command, and comes back to `online` by
//! itself; each change is recorded once.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::api::{fault, Fault, Heartbeat, Metrics};
use burrow_core::identity::Identity;
use burrow_core::protocol::{Message, Role};

use super::monitor::{self, Settings};
use super::{Health, NodeState};
use crate::bus::Bus;
use crate::registry::Registry;

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn beat(faults: Vec<Fault>, skew_ms: i64) -> Heartbeat {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Heartbeat {
        version: "test".into(),
        metrics: Metrics {
            mem_total: 100,
            mem_available: 90,
            ..Metrics::default()
        },
        max_jobs: 4,
        sent_at_ms: (now_ms + skew_ms) as u64,
        interval_s: 30,
        faults,
        ..Heartbeat::default()
    }
}

#[test]
fn a_node_with_a_fault_or_a_skewed_clock_is_in_error_holds_its_commands_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate("node");
    let gateway = Identity::generate("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let registry = Arc::new(Registry::open(dir.path()).unwrap());
    registry
        .update(|s| {
            let mut n = super::tests_support::node("n");
            n.public_key = node.public_line();
            n.ports = Some([port, crate::testing::free_port()]);
            s.nodes.insert("n".into(), n);
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
    // The fake agent: the handshake, then the beats it is given, sealed.
    let (beats, to_send) = crossbeam_channel::unbounded::<Heartbeat>();
    let gk = gateway.public();
    let agent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut ch =
            burrow_core::secure::handshake(&mut s, &node, Role::Agent, |k| *k == gk).unwrap();
        for b in to_send {
            let frame = ch.sealer.seal(&Message::Heartbeat(b)).unwrap();
            std::io::Write::write_all(&mut s, &frame).unwrap();
        }
    });
    let bus = Arc::new(Bus::new(gateway, registry.clone()));
    let health = Health::new(registry, bus.clone());
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let thread = monitor::spawn(
        health.clone(),
        Settings::new(Duration::from_secs(20), Duration::from_secs(3600)),
        stopped,
    )
    .unwrap();
    let state = |h: &Health| h.state("n").unwrap();
    let is = |want: NodeState, h: &Health| state(h).state == want;

    beats.send(beat(Vec::new(), 0)).unwrap();
    wait_for("online", Duration::from_secs(10), || {
        is(NodeState::Online, &health)
    });
    wait_for("commands taken", Duration::from_secs(3), || {
        bus.takes_commands("n")
    });

    let bad = Fault {
        code: fault::DATA_DIR_NOT_WRITABLE.into(),
        message: "/var/lib/burrow is read-only".into(),
    };
    beats.send(beat(vec![bad], 0)).unwrap();
    wait_for("error", Duration::from_secs(5), || {
        is(NodeState::Error, &health)
    });
    assert!(state(&health)
        .reason
        .contains("read-only (data_dir_not_writable)"));
    wait_for("commands held", Duration::from_secs(3), || {
        !bus.takes_commands("n")
    });
    assert!(bus.is_linked("n"), "an error node keeps its link");

    beats.send(beat(Vec::new(), 0)).unwrap();
    wait_for("online again", Duration::from_secs(5), || {
        is(NodeState::Online, &health)
    });
    wait_for("commands taken again", Duration::from_secs(3), || {
        bus.takes_commands("n")
    });

    beats.send(beat(Vec::new(), -120_000)).unwrap();
    wait_for("error from the clock", Duration::from_secs(5), || {
        is(NodeState::Error, &health)
    });
    assert!(
        state(&health).reason.contains("behind"),
        "{:?}",
        state(&health)
    );
    beats.send(beat(Vec::new(), 0)).unwrap();
    wait_for("online once more", Duration::from_secs(5), || {
        is(NodeState::Online, &health)
    });

    // Each change recorded once, newest first.
    let want = [
        NodeState::Online,
        NodeState::Error,
        NodeState::Online,
        NodeState::Error,
        NodeState::Online,
    ];
    let got = || -> Vec<NodeState> { health.changes("n", 100).iter().map(|c| c.to).collect() };
    let deadline = Instant::now() + Duration::from_secs(5);
    while got() != want {
        assert!(Instant::now() < deadline, "recorded {:?}", got());
        std::thread::sleep(Duration::from_millis(20));
    }
    let changes = health.changes("n", 100);
    assert_eq!(changes[1].from, Some(NodeState::Online));
    assert!(changes[2].reason.is_empty() && changes[1].reason.contains("behind"));

    drop(stop);
    thread.join().unwrap();
    drop(beats);
    bus.shutdown();
    agent.join().unwrap();
}
