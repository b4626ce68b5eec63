//! Joining a gateway: decode the join string, log in to sshd with the enrollment key derived from its
//! secret (host key checked against the pin first), prove our own key with a signed request, and wait
//! while an operator has not approved us yet. The result (pins, ports, token) is saved in the data dir.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::api::{PairReply, PairRequest, SignedRequest};
use burrow_core::handshake::pair_message;
use burrow_core::identity::{Identity, PublicKey};
use burrow_core::join::{enrollment_identity, JoinTicket};

use crate::cli::Profile;
use crate::gateway_api::ApiChannel;
use crate::state::{AgentState, DataDir, Pins};
use crate::tunnel::{Stream, Tunnel, TunnelConfig, TunnelError};

/// How often a pending node asks whether it has been approved.
const PENDING_POLL: Duration = Duration::from_secs(2);

/// The SSH side of a tunnel to the pinned gateway, logging in with `key`.
pub fn tunnel_config(pins: &Pins, key: &Identity, listen_ports: Vec<u16>) -> TunnelConfig {
    TunnelConfig {
        addr: pins.ssh.clone(),
        user: pins.user.clone(),
        host_key_pin: pins.host_key.clone(),
        private_key_pem: key.to_openssh_pem(),
        public_key_line: key.public_line(),
        listen_ports,
        connect_timeout: Duration::from_secs(15),
    }
}

/// Pairs with the gateway of `join` (or confirms an existing pairing) and returns the saved state.
pub fn join(dir: &DataDir, join: &str, profile: &Profile) -> anyhow::Result<AgentState> {
    // The string first: a typo must not leave a fresh node key behind.
    let ticket = JoinTicket::decode(join)?;
    let identity = dir.identity()?;
    let pins = Pins::from_ticket(&ticket);
    let name = match &profile.name {
        Some(n) => n.clone(),
        None => hostname(),
    };
    let state = match dir.load()? {
        Some(s) if s.gateway.gateway_key != pins.gateway_key => bail!(
            "this data dir is already paired with another gateway (as {:?}); use another --data-dir, \
             or remove it to start over",
            s.name
        ),
        Some(s) if s.status == "approved" && s.name == name => {
            log::info!("already paired as {name}");
            return Ok(s);
        }
        Some(s) if s.name == name => s,
        _ => AgentState {
            name,
            gateway: pins,
            capabilities: profile.capabilities.clone(),
            labels: profile.labels.iter().cloned().collect(),
            status: "new".into(),
            ports: None,
            token: None,
        },
    };
    settle(dir, &identity, state, Some(&ticket.secret))
}

/// Asks until approved: with the join secret while the gateway does not know our key yet, then with
/// our own key's signature while pending.
///
/// The whole wait uses one SSH session, logged in with the enrollment key when we have a join
/// secret (its key line reaches the API for as long as the join token is valid), else with the
/// node's own key. sshd fixes a session's key options when it logs in, so the session keeps reaching
/// the API even after approval has rewritten the node's key line to the approved one, which opens no
/// channel at all (it only listens).
fn settle(
    dir: &DataDir,
    identity: &Identity,
    mut state: AgentState,
    secret: Option<&str>,
) -> anyhow::Result<AgentState> {
    let mut session: Option<Tunnel> = None;
    loop {
        let ask_secret = secret.filter(|_| state.status == "new");
        let reused = session.as_ref().is_some_and(|t| !t.is_closed());
        if !reused {
            session = Some(login(&state, identity, secret)?);
        }
        let tunnel = session.as_ref().expect("logged in");
        let reply = match ask(tunnel, &state, identity, ask_secret) {
            Ok(reply) => reply,
            // The session may have died between polls: once more on a fresh one.
            Err(e) if reused => {
                log::debug!("pairing request on the open session failed ({e:#}); logging in again");
                session = Some(login(&state, identity, secret)?);
                let tunnel = session.as_ref().expect("logged in");
                ask(tunnel, &state, identity, ask_secret).map_err(|e| stuck(e, &state))?
            }
            Err(e) => return Err(stuck(e, &state)),
        };
        match reply.status.as_str() {
            "approved" => {
                state.status = "approved".into();
                state.token = reply.token;
                state.ports = reply.ports;
                dir.save(&state)?;
                match state.ports {
                    Some([a, b]) => {
                        log::info!("paired as {}; listening ports {a} and {b}", state.name)
                    }
                    None => log::info!("paired as {}", state.name),
                }
                if let Some(tunnel) = session.take() {
                    tunnel.shutdown();
                }
                return Ok(state);
            }
            "pending" => {
                if state.status != "pending" {
                    state.status = "pending".into();
                    dir.save(&state)?;
                    log::info!("{}", reply.message);
                }
                std::thread::sleep(PENDING_POLL);
            }
            other => bail!("unexpected pairing status {other:?}: {}", reply.message),
        }
    }
}

/// A session for pairing requests: with the enrollment key of `secret` if there is one; once
/// pending, with the node's own key when the enrollment key is no longer accepted (token expired).
fn login(state: &AgentState, identity: &Identity, secret: Option<&str>) -> anyhow::Result<Tunnel> {
    match secret {
        Some(s) => match connect(state, identity, Some(s)) {
            Err(e) if state.status == "pending" => {
                log::info!("{e:#}; asking with this node's own key");
                connect(state, identity, None)
            }
            other => other,
        },
        None => connect(state, identity, None),
    }
}

/// Explains a pending node whose own key logs in but can no longer reach the API: it was approved
/// while this agent was not waiting, and an approved key opens no channel to learn its ports.
fn stuck(e: anyhow::Error, state: &AgentState) -> anyhow::Error {
    if state.status == "pending" {
        e.context(
            "this node's key no longer reaches the gateway's pairing API; if it was approved while this \
             agent was not running, join again with a fresh join string (`agent run --join ...`)",
        )
    } else {
        e
    }
}

/// Resumes waiting for approval after a restart while pending.
pub fn join_pending(dir: &DataDir, state: &AgentState) -> anyhow::Result<AgentState> {
    settle(dir, &dir.identity()?, state.clone(), None)
}

/// Logs in for a pairing request. With `secret`, with the enrollment key; without, with the node's
/// own key (known to the gateway once pending or approved).
fn connect(
    state: &AgentState,
    identity: &Identity,
    secret: Option<&str>,
) -> anyhow::Result<Tunnel> {
    let ssh_key = match secret {
        Some(s) => enrollment_identity(s),
        None => identity.clone(),
    };
    let (tunnel, _incoming) = login_as(state, &ssh_key, secret.is_some())
        .map_err(|e| match (e, secret) {
            (TunnelError::AuthRejected(_), Some(_)) => anyhow!(
                "the gateway's sshd refused the join token's key: the token expired or was revoked"
            ),
            (TunnelError::AuthRejected(_), None) => anyhow!(
                "the gateway's sshd refused this node's key: it was rejected, or its pairing request lapsed"
            ),
            (e, _) => anyhow!(e),
        })?;
    Ok(tunnel)
}

/// Sends one signed pairing request on `tunnel`.
fn ask(
    tunnel: &Tunnel,
    state: &AgentState,
    identity: &Identity,
    secret: Option<&str>,
) -> anyhow::Result<PairReply> {
    let gateway_key = PublicKey::from_base64(&state.gateway.gateway_key)?;
    let mut api = ApiChannel::open(tunnel, state.gateway.api_port, &gateway_key)?;
    let request = PairRequest {
        name: state.name.clone(),
        public_key: identity.public_line(),
        join_secret: secret.map(str::to_string),
        hostname: hostname(),
        capabilities: state.capabilities.clone(),
        labels: state.labels.clone(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        version: burrow_core::VERSION.into(),
    };
    let text = serde_json::to_string(&request).expect("request serializes");
    let signature = identity.sign(&pair_message(&api.server_nonce, text.as_bytes()));
    let signed = SignedRequest {
        request: text,
        server_nonce: STANDARD.encode(&api.server_nonce),
        signature: STANDARD.encode(signature),
    };
    api.post("/api/v1/agent/pair", None, &signed)
        .context("pairing refused")
}

/// Logs in for a pairing request. The gateway's sshd lets enrollment logins (the join secret's key, a
/// pending node's key) reach the API and nothing else, listening included, and only as the enrollment
/// user; an approved node's key is known under the node user alone. A pending node may have been
/// approved since it last asked, so its key is tried as the node user when the enrollment user
/// refuses it.
fn login_as(
    state: &AgentState,
    key: &Identity,
    enrolling: bool,
) -> Result<(Tunnel, crossbeam_channel::Receiver<Stream>), TunnelError> {
    let pins = &state.gateway;
    let mut config = tunnel_config(pins, key, Vec::new());
    let enroll_user = pins.enroll_user.as_ref().filter(|u| **u != pins.user);
    match enroll_user {
        Some(user) if enrolling || state.status != "approved" => {
            config.user.clone_from(user);
            match Tunnel::connect(&config) {
                Err(TunnelError::AuthRejected(_)) if !enrolling => {
                    config.user.clone_from(&pins.user);
                    Tunnel::connect(&config)
                }
                other => other,
            }
        }
        _ => Tunnel::connect(&config),
    }
}

fn hostname() -> String {
    burrow_core::hostname("node")
}
