//! The bus against a hostile path: it dials only registered ports, and a link on which the agent's
//! frames stop arriving (a relay passing the gateway's frames but dropping the agent's) is cut within
//! the probe's bound.

use super::*;
use burrow_core::protocol::Role;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::thread;

use crate::registry::NodeRecord;

fn registry_with(dir: &std::path::Path, node: &Identity, ports: [u16; 2]) -> Arc<Registry> {
    let registry = Arc::new(Registry::open(dir).unwrap());
    registry
        .update(|s| {
            s.nodes.insert(
                "n".into(),
                NodeRecord {
                    id: "n".into(),
                    public_key: node.public_line(),
                    fingerprint: node.public().fingerprint(),
                    approval: Approval::Approved,
                    hostname: "n".into(),
                    capabilities: Vec::new(),
                    labels: Default::default(),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                    version: "test".into(),
                    ports: Some(ports),
                    created_at: 0,
                    approved_at: Some(0),
                    pending_until: None,
                    join_token: "t".into(),
                },
            );
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
    registry
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

#[test]
fn dial_ignores_the_port_a_heartbeat_reported() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate("node");
    let registry = registry_with(
        dir.path(),
        &node,
        [crate::testing::free_port(), crate::testing::free_port()],
    );
    // Anyone with a node token could once make the gateway dial this.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    squatter.set_nonblocking(true).unwrap();
    let reported = squatter.local_addr().unwrap().port();
    registry.set_live("n", |l| l.port = Some(reported));
    let bus = Arc::new(Bus::new(Identity::generate("gateway"), registry));
    bus.dial("n");
    assert!(wait_for(Duration::from_secs(10), || lock(&bus.dialing).is_empty()));
    assert!(!bus.is_linked("n"));
    assert!(
        squatter.accept().is_err(),
        "the gateway dialed a port the node merely reported"
    );
    bus.shutdown();
}

/// The bound, with the health thread's figures: `serve --dead-after` (20 s) after the last frame,
/// noticed at the next probe (every second). Here the same logic with 0.5 s and a 50 ms probe.
#[test]
fn relay_dropping_the_agents_frames_is_cut_within_the_liveness_bound() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate("node");
    let gateway = Identity::generate("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let registry = registry_with(dir.path(), &node, [port, crate::testing::free_port()]);
    // The agent side of the relay: the handshake passes both ways, then the agent's frames are
    // dropped (nothing more arrives at the gateway) while the gateway's keep arriving.
    let got_exec = Arc::new(AtomicBool::new(false));
    let fake_agent = thread::spawn({
        let (got_exec, gk) = (got_exec.clone(), gateway.public());
        move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut channel =
                burrow_core::secure::handshake(&mut s, &node, Role::Agent, |k| *k == gk).unwrap();
            while let Ok(m) = channel.opener.read_message(&mut s) {
                if matches!(m, Message::Exec { .. }) {
                    got_exec.store(true, Ordering::Release);
                }
            }
        }
    });
    let bus = Arc::new(Bus::new(gateway, registry));
    bus.dial("n");
    assert!(wait_for(Duration::from_secs(10), || bus.is_linked("n")));
    // A request too large for one frame is refused (413 at the API) and the link stays up: the
    // peer never sees a frame it would have to refuse.
    let huge = ExecSpec {
        command: Some("x".repeat(burrow_core::protocol::MAX_FRAME)),
        ..ExecSpec::default()
    };
    let refused = bus.exec("n", new_job_id(), huge).err().expect("refused");
    assert_eq!(refused.kind, Kind::TooLarge, "{refused}");
    assert!(bus.is_linked("n"));
    let mut job = bus
        .exec("n", new_job_id(), ExecSpec::default())
        .map_err(|r| r.message)
        .unwrap();
    assert_eq!(new_job_id().len(), 32, "128 bits as hex");
    assert!(wait_for(Duration::from_secs(5), || got_exec.load(Ordering::Acquire)));
    let (ping_after, dead_after) = (Duration::from_millis(100), Duration::from_millis(500));
    let quiet_since = Instant::now();
    while bus.is_linked("n") {
        assert!(quiet_since.elapsed() < Duration::from_secs(5), "never cut");
        bus.probe(ping_after, dead_after);
        thread::sleep(Duration::from_millis(50));
    }
    let took = quiet_since.elapsed();
    assert!(
        took < dead_after + Duration::from_millis(500),
        "cut after {took:?}"
    );
    assert!(matches!(
        job.next(Instant::now() + Duration::from_secs(5)),
        Some(Event::Lost(_))
    ));
    bus.shutdown();
    fake_agent.join().unwrap();
}
