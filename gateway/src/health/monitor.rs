//! The health thread: keeps a link to every approved node (redialing when it drops), pings quiet links and drops
//! dead ones. A node is `online` exactly while its authenticated link is up; heartbeats (on the link,
//! at once and every 30 s) refresh `last_seen` and its metrics.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::bus::Bus;
use crate::registry::{Approval, Registry};

/// How often approved-but-unlinked nodes are redialed and links checked.
const TICK: Duration = Duration::from_secs(2);
/// A link with no frame for this long gets a ping...
const PING_AFTER: Duration = Duration::from_secs(15);
/// ...and is dropped after this long.
const DEAD_AFTER: Duration = Duration::from_secs(45);

/// Runs until `stop` is dropped or sent to ("health" thread).
pub fn spawn(
    registry: Arc<Registry>,
    bus: Arc<Bus>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || loop {
            match stop.recv_timeout(TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let approved: Vec<String> = registry
                .read()
                .nodes
                .values()
                .filter(|n| n.approval == Approval::Approved)
                .map(|n| n.id.clone())
                .collect();
            for id in approved {
                bus.dial(&id);
            }
            bus.probe(PING_AFTER, DEAD_AFTER);
        })
}
