//! Dialing a node: only its two registered ports, the first one first, each from a short-lived
//! "dial-<node>" thread, at most one per node and port at a time. A handshake that fails (not a
//! refused or silent port) is told to the health module, which counts them.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use burrow_core::identity::PublicKey;
use burrow_core::protocol::Role;
use burrow_core::secure::{handshake, Opener, Sealer};
use crossbeam_channel::Receiver;

use super::{lock, Bus, LinkEvent};

/// How long a dial of a node's first port has before its second port is dialed too.
const FIRST_PORT_HEAD_START: Duration = Duration::from_secs(1);

impl Bus {
    /// Dials a node in the background unless it is linked: each of its two ports not being dialed
    /// already gets a dial thread (`dial-<node>`), the second after the first (see below). The
    /// first handshake that succeeds links the node.
    pub fn dial(self: &Arc<Self>, node: &str) {
        if self.is_linked(node) {
            return;
        }
        let (key, ports) = {
            let state = self.registry.read();
            let Some(n) = state.nodes.get(node) else {
                return;
            };
            let Some(ports) = n.ports else { return };
            match PublicKey::from_openssh(&n.public_key) {
                Ok(key) => (key, ports),
                Err(e) => {
                    log::debug!("dialing {node}: its key does not parse: {e}");
                    return;
                }
            }
        };
        // Only the two ports assigned at approval, which sshd lets no other key listen on. The port a
        // node reports in its heartbeat is never dialed: any node token holder can set it.
        // The first port is tried first: the second is dialed only once the first has failed, or
        // has not answered within FIRST_PORT_HEAD_START (a stale session's listener that never
        // answers must not hold the node back), or is still stuck from an earlier round.
        let mut first_done: Option<Receiver<()>> = None;
        for port in ports {
            if !lock(&self.dialing).insert((node.to_string(), port)) {
                continue;
            }
            let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
            let wait_for = first_done.take();
            let bus = self.clone();
            let name = node.to_string();
            let spawned = std::thread::Builder::new()
                .name(format!("dial-{node}"))
                .spawn(move || {
                    // Disconnected (not sent to) when the first port's dial ends.
                    if let Some(first) = wait_for {
                        let _ = first.recv_timeout(FIRST_PORT_HEAD_START);
                    }
                    if !bus.is_linked(&name) {
                        if let Err(e) = bus.connect(&name, port, &key) {
                            log::debug!("dialing {name} on port {port}: {e:#}");
                        }
                    }
                    lock(&bus.dialing).remove(&(name, port));
                    drop(done_tx);
                });
            match spawned {
                Ok(handle) => {
                    self.keep(handle);
                    first_done = Some(done_rx);
                }
                Err(e) => {
                    log::error!("spawning a dial thread: {e}");
                    lock(&self.dialing).remove(&(node.to_string(), port));
                }
            }
        }
    }

    fn connect(self: &Arc<Self>, node: &str, port: u16, key: &PublicKey) -> anyhow::Result<()> {
        let (stream, sealer, opener) = self.handshake_on(node, port, key)?;
        self.event(LinkEvent::HandshakeOk { node });
        self.attach(node, stream, sealer, opener)
    }

    fn handshake_on(
        &self,
        node: &str,
        port: u16,
        key: &PublicKey,
    ) -> anyhow::Result<(TcpStream, Sealer, Opener)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let channel =
            handshake(&mut stream, &self.identity, Role::Gateway, |k| k == key).map_err(|e| {
                let error = e.to_string();
                // A closed or timed-out connection only says nobody answers there (a stale sshd
                // listener, an agent that is gone); anything else is a failed handshake.
                if !matches!(
                    e,
                    burrow_core::Error::Io { .. } | burrow_core::Error::Closed
                ) {
                    self.event(LinkEvent::HandshakeFailed {
                        node,
                        port,
                        error: &error,
                    });
                }
                anyhow::anyhow!("handshake with {node} on port {port}: {error}")
            })?;
        stream.set_read_timeout(None)?;
        Ok((stream, channel.sealer, channel.opener))
    }
}
