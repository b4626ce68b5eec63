//! Pairing: join tokens, the agent's proof of key possession, operator approval, node tokens, and the
//! sshd `authorized_keys` lines that follow from all of it.
//!
//! A join token's secret derives an enrollment key ([`burrow_core::join::enrollment_identity`]); while
//! the token is valid that key may only open a direct-tcpip channel to the API, so a new node can reach
//! the pairing endpoint and nothing else. A pending node's own key gets the same reach (to poll). Both
//! are [`KeyLines::enrollment`], authorized for the enrollment account alone, which cannot listen
//! (see `sshd::users`); an approved node's key may listen on its own two ports and nothing else.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::api::{HelloReply, PairReply, PairRequest, SignedRequest};
use burrow_core::handshake::{api_hello_message, pair_message};
use burrow_core::identity::{Identity, PublicKey};
use burrow_core::join::{self, JoinTicket};

use crate::audit::Audit;
use crate::nonce::ServerNonces;
use crate::refusal::{bad_request, conflict, forbidden, not_found, Kind, Refusal};
use crate::registry::{now, Approval, JoinTokenRecord, NodeRecord, Registry};
use crate::tokens::{Role, Tokens};

/// Node tokens live this long and are refreshed by heartbeats in their second half.
pub const NODE_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Pending requests lapse after this long without approval.
const PENDING_TTL: u64 = 24 * 3600;
/// The longest a join token may live. A join string is a bearer credential that lets whoever
/// holds it enroll a node (auto-approved, unless `--manual`) and it travels in scripts and chat: a year
/// covers a provisioning image baked once a year; anything longer is a standing invitation.
pub const MAX_JOIN_TTL: Duration = Duration::from_secs(365 * 86400);
/// Nodes a gateway takes unless `serve --max-nodes` says otherwise.
pub const DEFAULT_MAX_NODES: usize = 100;

/// Where nodes reach the gateway; written into join strings.
pub struct Contact {
    pub ssh_public: String,
    pub ssh_user: String,
    /// Who enrollment keys and pending nodes log in as; `None`: `ssh_user` (unprivileged sshd).
    pub enroll_user: Option<String>,
    pub host_fingerprint: String,
    pub api_port: u16,
}

/// Writes sshd's key files.
pub type KeySink = Box<dyn Fn(&KeyLines) -> anyhow::Result<()> + Send + Sync>;

/// The `authorized_keys` lines the registry implies, by the account they are for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyLines {
    /// Approved nodes: the node user.
    pub nodes: Vec<String>,
    /// Join tokens' enrollment keys and pending nodes: the enrollment user, whose sshd settings
    /// forbid listening (see `sshd::users`).
    pub enrollment: Vec<String>,
}

pub struct Pairing {
    identity: Identity,
    pub tokens: Tokens,
    registry: std::sync::Arc<Registry>,
    contact: Contact,
    keys: KeySink,
    /// Held across reading the registry and writing `authorized_keys`, so writes land in the order
    /// their reads were taken and the file never goes back to an older registry.
    keys_lock: Mutex<()>,
    audit: Audit,
    nonces: ServerNonces,
    /// Approved plus pending nodes allowed at once (`serve --max-nodes`).
    max_nodes: usize,
}

impl Pairing {
    pub fn new(
        identity: Identity,
        registry: std::sync::Arc<Registry>,
        contact: Contact,
        keys: KeySink,
        audit: Audit,
    ) -> anyhow::Result<Pairing> {
        let pairing = Pairing {
            tokens: Tokens::new(&identity)?,
            identity,
            registry,
            contact,
            keys,
            keys_lock: Mutex::new(()),
            audit,
            nonces: ServerNonces::new(),
            max_nodes: DEFAULT_MAX_NODES,
        };
        pairing.bound_join_tokens()?;
        pairing.sync_keys()?;
        Ok(pairing)
    }

    /// The same, taking at most `max` nodes approved or pending at once (`serve --max-nodes`): a
    /// join or an approval beyond that is refused (`node_limit`). Nodes already registered over
    /// the limit (it was lowered) keep what they have.
    pub fn with_max_nodes(mut self, max: usize) -> Pairing {
        self.max_nodes = max;
        self
    }

    /// `--max-nodes`.
    pub fn max_nodes(&self) -> usize {
        self.max_nodes
    }

    /// Nodes that count against `--max-nodes` now.
    pub fn nodes_used(&self) -> usize {
        limit::nodes_used(&self.registry.read(), now())
    }

    /// A state file written before join TTLs were bounded may hold a token that lives for millennia
    /// (`10000y` made pairing and `serve` panic): cut such tokens to [`MAX_JOIN_TTL`] from creation.
    fn bound_join_tokens(&self) -> anyhow::Result<()> {
        let max = MAX_JOIN_TTL.as_secs();
        let too_long = |t: &JoinTokenRecord| t.expires_at > t.created_at.saturating_add(max);
        if !self.registry.read().join_tokens.iter().any(too_long) {
            return Ok(());
        }
        self.registry.update(|s| {
            for t in s.join_tokens.iter_mut().filter(|t| too_long(t)) {
                t.expires_at = t.created_at.saturating_add(max);
                log::warn!(
                    "join token {} outlived the {}-day bound; it now expires at {}",
                    t.id,
                    max / 86400,
                    crate::registry::rfc3339(t.expires_at)
                );
            }
            Ok::<_, anyhow::Error>(())
        })
    }

    /// Creates a join token and returns the join string.
    pub fn create_join(
        &self,
        ttl: Duration,
        uses: u32,
        manual: bool,
        actor: impl Into<crate::audit::Actor>,
    ) -> Result<(String, JoinTokenRecord), Refusal> {
        if uses == 0 {
            return Err(bad_request("uses must be at least 1"));
        }
        if ttl.as_secs() == 0 {
            return Err(bad_request("ttl must be at least one second"));
        }
        if ttl > MAX_JOIN_TTL {
            return Err(bad_request(format!(
                "ttl {} is too long: a join token lives at most {} (create a new one when it lapses)",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_JOIN_TTL)
            )));
        }
        let secret = join::new_secret();
        let hash = join::secret_hash(&secret);
        let now = now();
        let record = JoinTokenRecord {
            id: hash[..12].to_string(),
            secret_hash: hash,
            enrollment_key: join::enrollment_identity(&secret).public().openssh(),
            created_at: now,
            expires_at: now + ttl.as_secs(),
            uses,
            used: 0,
            manual,
            revoked: false,
        };
        self.registry.update(|s| {
            s.join_tokens
                .retain(|t| t.expires_at.saturating_add(7 * 86400) > now);
            s.join_tokens.push(record.clone());
            Ok::<_, Refusal>(())
        })?;
        self.sync_keys()?;
        self.audit.record(
            actor,
            "join.create",
            &record.id,
            serde_json::json!({"uses": uses, "manual": manual, "expires_at": record.expires_at}),
        );
        let ticket = JoinTicket {
            ssh: self.contact.ssh_public.clone(),
            user: self.contact.ssh_user.clone(),
            enroll_user: self.contact.enroll_user.clone(),
            host_key: self.contact.host_fingerprint.clone(),
            gateway_key: self.identity.public().to_base64(),
            api_port: self.contact.api_port,
            secret,
        };
        Ok((ticket.encode(), record))
    }

    /// Answers an agent's challenge: proves this is the pinned gateway and hands out a server nonce.
    pub fn hello(&self, client_nonce_b64: &str) -> Result<HelloReply, Refusal> {
        let client_nonce = STANDARD
            .decode(client_nonce_b64)
            .ok()
            .filter(|n| n.len() == 32)
            .ok_or_else(|| bad_request("nonce must be base64 of 32 bytes"))?;
        // Stateless (nonce.rs): a flood of hellos cannot crowd out anyone's pairing.
        let server_nonce = self.nonces.issue(now());
        let signature = self
            .identity
            .sign(&api_hello_message(&client_nonce, &server_nonce));
        Ok(HelloReply {
            server_nonce: STANDARD.encode(server_nonce),
            signature: STANDARD.encode(signature),
        })
    }

    /// Handles a signed pairing request (first contact, or a known key asking where it stands).
    pub fn pair(&self, signed: &SignedRequest) -> Result<PairReply, Refusal> {
        let nonce: [u8; 32] = STANDARD
            .decode(&signed.server_nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad_request("server_nonce must be base64 of 32 bytes"))?;
        if !self.nonces.check(&nonce, now()) {
            return Err(Refusal::new(
                Kind::Unauthorized,
                "unknown or expired server nonce: ask /api/v1/agent/hello again",
            ));
        }
        let request: PairRequest = serde_json::from_str(&signed.request)
            .map_err(|e| bad_request(format!("bad pairing request: {e}")))?;
        validate_name(&request.name)?;
        let key = PublicKey::from_openssh(&request.public_key)
            .map_err(|e| bad_request(format!("public_key: {e}")))?;
        let signature = STANDARD
            .decode(&signed.signature)
            .map_err(|_| bad_request("signature is not base64"))?;
        key.verify(&pair_message(&nonce, signed.request.as_bytes()), &signature)
            .map_err(|_| {
                log::warn!(
                    "pairing refused for {:?}: bad signature for key {}",
                    request.name,
                    key.fingerprint()
                );
                Refusal::new(
                    Kind::Unauthorized,
                    "signature does not prove possession of the key",
                )
            })?;
        let result = self.registry.update(|s| self.decide(s, &request, &key));
        match &result {
            Ok(reply) => {
                log::info!(
                    "pairing {:?} ({}): {}",
                    request.name,
                    key.fingerprint(),
                    reply.status
                );
                self.sync_keys()?;
            }
            Err(r) => log::warn!(
                "pairing refused for {:?} ({}): {}",
                request.name,
                key.fingerprint(),
                r.message
            ),
        }
        result
    }

    fn decide(
        &self,
        s: &mut crate::registry::State,
        req: &PairRequest,
        key: &PublicKey,
    ) -> Result<PairReply, Refusal> {
        let now = now();
        let line = key.openssh();
        if let Some(other) = s
            .nodes
            .values()
            .find(|n| n.public_key == line && n.id != req.name)
        {
            return Err(conflict(format!(
                "this key is already registered as node {:?}",
                other.id
            )));
        }
        if let Some(node) = s.nodes.get_mut(&req.name).filter(|n| n.public_key == line) {
            // A known key asking again: refresh what it reports about itself and say where it stands.
            node.hostname.clone_from(&req.hostname);
            node.version.clone_from(&req.version);
            return self.reply_for(node, now);
        }
        // An unknown key. Whether the name is taken is told only to a holder of a usable join
        // secret: anyone else gets the same refusal for a taken name as for a free one.
        let secret = req
            .join_secret
            .as_deref()
            .ok_or_else(|| Refusal::new(Kind::Unauthorized, "unknown key and no join secret"))?;
        let hash = join::secret_hash(secret);
        let token = s
            .join_tokens
            .iter_mut()
            .find(|t| t.secret_hash == hash)
            .ok_or_else(|| forbidden("unknown join token"))?;
        if token.revoked {
            return Err(forbidden(format!("join token {} was revoked", token.id)));
        }
        if now >= token.expires_at {
            return Err(forbidden(format!(
                "join token {} expired at {}",
                token.id,
                crate::registry::rfc3339(token.expires_at)
            )));
        }
        if token.used >= token.uses {
            return Err(forbidden(format!(
                "join token {} is used up ({} of {} uses)",
                token.id, token.used, token.uses
            )));
        }
        if let Some(holder) = s.nodes.get(&req.name) {
            return Err(conflict(format!(
                "node name {:?} is already held by another key ({}); pick another --name or remove the old node",
                req.name, holder.fingerprint
            )));
        }
        // Before the token's use is counted: a refused node does not spend it.
        let token_id = token.id.clone();
        if let Err(full) = limit::check_room(s, self.max_nodes, now) {
            log::warn!(
                "pairing refused for {:?} with join token {token_id}: {}",
                req.name,
                full.message
            );
            return Err(full);
        }
        let token = s
            .join_tokens
            .iter_mut()
            .find(|t| t.id == token_id)
            .ok_or_else(|| Refusal::new(Kind::Internal, "join token vanished while pairing"))?;
        token.used += 1;
        let manual = token.manual;
        let token_id = token.id.clone();
        let mut node = NodeRecord {
            id: req.name.clone(),
            public_key: line,
            fingerprint: key.fingerprint(),
            approval: Approval::Pending,
            hostname: req.hostname.clone(),
            capabilities: req.capabilities.clone(),
            labels: req.labels.clone(),
            os: req.os.clone(),
            arch: req.arch.clone(),
            version: req.version.clone(),
            ports: None,
            created_at: now,
            approved_at: None,
            pending_until: Some(now + PENDING_TTL),
            join_token: token_id.clone(),
        };
        if !manual {
            approve_record(&mut node, s.nodes.values(), now)?;
        }
        let reply = self.reply_for(&node, now)?;
        self.audit.record(&req.name, "node.join", &req.name, serde_json::json!({"fingerprint": node.fingerprint, "join_token": token_id, "status": reply.status}));
        s.nodes.insert(req.name.clone(), node);
        Ok(reply)
    }

    fn reply_for(&self, node: &NodeRecord, now: u64) -> Result<PairReply, Refusal> {
        Ok(match node.approval {
            Approval::Approved => {
                let (token, _) = self.tokens.issue(&node.id, Role::Node, NODE_TOKEN_TTL)?;
                PairReply {
                    status: "approved".into(),
                    message: format!("node {:?} is approved", node.id),
                    token: Some(token),
                    ports: node.ports,
                }
            }
            Approval::Pending if node.pending_until.is_some_and(|t| t <= now) => {
                return Err(forbidden(format!(
                    "pairing request of {:?} expired without approval; join again",
                    node.id
                )))
            }
            Approval::Pending => PairReply {
                status: "pending".into(),
                message: format!("waiting for an operator: gateway nodes approve {}", node.id),
                token: None,
                ports: None,
            },
            Approval::Rejected => {
                return Err(forbidden(format!(
                    "node {:?} was rejected by an operator",
                    node.id
                )))
            }
        })
    }

    /// Approves a pending (or previously rejected) node.
    pub fn approve(
        &self,
        id: &str,
        actor: impl Into<crate::audit::Actor>,
    ) -> Result<NodeRecord, Refusal> {
        let node = self.registry.update(|s| {
            let others: Vec<NodeRecord> =
                s.nodes.values().filter(|n| n.id != id).cloned().collect();
            let node = s
                .nodes
                .get_mut(id)
                .ok_or_else(|| not_found(format!("no node {id:?}")))?;
            // A rejected node does not count against the limit; approving it again does.
            if node.approval == Approval::Rejected {
                limit::check_room(s, self.max_nodes, now())?;
            }
            let node = s
                .nodes
                .get_mut(id)
                .ok_or_else(|| not_found(format!("no node {id:?}")))?;
            if node.approval != Approval::Approved {
                approve_record(node, others.iter(), now())?;
            }
            Ok::<_, Refusal>(node.clone())
        })?;
        self.sync_keys()?;
        self.audit.record(
            actor,
            "node.approve",
            id,
            serde_json::json!({"ports": node.ports}),
        );
        Ok(node)
    }

    /// Rejects a node: its key loses all access at once. Its ports stay reserved for it, so approving
    /// it again later brings back the agent, which keeps them and retries, without a new join.
    pub fn reject(
        &self,
        id: &str,
        actor: impl Into<crate::audit::Actor>,
    ) -> Result<NodeRecord, Refusal> {
        let node = self.registry.update(|s| {
            let node = s
                .nodes
                .get_mut(id)
                .ok_or_else(|| not_found(format!("no node {id:?}")))?;
            node.approval = Approval::Rejected;
            Ok::<_, Refusal>(node.clone())
        })?;
        self.sync_keys()?;
        self.audit
            .record(actor, "node.reject", id, serde_json::json!({}));
        Ok(node)
    }

    /// Removes a node for good: its key loses all access, its ports and its name are free again, and
    /// it must join anew to come back.
    pub fn revoke(
        &self,
        id: &str,
        actor: impl Into<crate::audit::Actor>,
    ) -> Result<NodeRecord, Refusal> {
        let node = self.registry.update(|s| {
            s.nodes
                .remove(id)
                .ok_or_else(|| not_found(format!("no node {id:?}")))
        })?;
        self.sync_keys()?;
        self.audit.record(
            actor,
            "node.revoke",
            id,
            serde_json::json!({"fingerprint": node.fingerprint}),
        );
        Ok(node)
    }

    /// The audit trail handle.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Rewrites sshd's key files from the registry.
    pub fn sync_keys(&self) -> anyhow::Result<()> {
        let _serial = self.keys_lock.lock().unwrap_or_else(|e| e.into_inner());
        let lines = key_lines(&self.registry.read(), self.contact.api_port, now());
        (self.keys)(&lines)
    }
}

/// The `authorized_keys` lines the registry implies. `command="/bin/false"` because `restrict` alone
/// still lets a key run commands; `permitlisten` is literal, so agents must ask for `127.0.0.1`. Keys
/// that may not listen at all are enrollment lines: their account's sshd settings forbid listening
/// (`PermitListen none`), and they also get port 1 (privileged, serves nothing), which is what keeps
/// them from listening where there is no enrollment account (an unprivileged sshd cannot bind it):
/// without any `permitlisten`, `port-forwarding` would allow listening anywhere.
pub fn key_lines(state: &crate::registry::State, api_port: u16, now: u64) -> KeyLines {
    let base = "restrict,port-forwarding,command=\"/bin/false\"";
    let open = format!("permitopen=\"127.0.0.1:{api_port}\"");
    let mut lines = KeyLines::default();
    for t in state.join_tokens.iter().filter(|t| t.enrollable(now)) {
        lines.enrollment.push(format!(
            "{base},permitlisten=\"127.0.0.1:1\",{open},expiry-time=\"{}\" {} burrow-enroll:{}",
            expiry_time(t.expires_at),
            t.enrollment_key,
            t.id
        ));
    }
    for n in state.nodes.values() {
        match (n.approval, n.ports) {
            // No channel to the API: everything an approved node says rides its secure link. A line
            // without any `permitopen` would open channels anywhere (sshd_config's `PermitOpen` is
            // `any`, and 9.2 has no `permitopen="none"` for keys), so port 1 (privileged, serves
            // nothing) stands for "none", as it does for `permitlisten` above.
            (Approval::Approved, Some([a, b])) => lines.nodes.push(format!(
                "{base},permitlisten=\"127.0.0.1:{a}\",permitlisten=\"127.0.0.1:{b}\",permitopen=\"127.0.0.1:1\" {} burrow-node:{}",
                n.public_key, n.id
            )),
            (Approval::Pending, _) if n.pending_until.is_some_and(|t| t > now) => lines.enrollment.push(format!(
                "{base},permitlisten=\"127.0.0.1:1\",{open},expiry-time=\"{}\" {} burrow-pending:{}",
                expiry_time(n.pending_until.unwrap_or(now)),
                n.public_key,
                n.id
            )),
            _ => {}
        }
    }
    lines
}

/// sshd's `expiry-time` in UTC (the `Z` suffix), rounded up to the minute.
fn expiry_time(unix: u64) -> String {
    let t = crate::registry::rfc3339(unix.saturating_add(59));
    // 2026-11-26T03:17:54Z → 202611260317Z
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).take(12).collect();
    format!("{digits}Z")
}

fn approve_record<'a>(
    node: &mut NodeRecord,
    others: impl Iterator<Item = &'a NodeRecord>,
    now: u64,
) -> Result<(), Refusal> {
    let taken: Vec<u16> = others.filter_map(|n| n.ports).flatten().collect();
    // A node approved before (then rejected) keeps its ports: its agent still listens on them.
    let kept = node
        .ports
        .filter(|pair| pair.iter().all(|p| !taken.contains(p)));
    node.ports = Some(match kept {
        Some(pair) => pair,
        None => allocate_ports(&taken)?,
    });
    node.approval = Approval::Approved;
    node.approved_at = Some(now);
    node.pending_until = None;
    Ok(())
}

/// Picks a pair of consecutive free loopback ports not held by another node. Random in a wide range,
/// so gateways sharing a host (tests) rarely collide; each candidate is checked bindable now.
fn allocate_ports(taken: &[u16]) -> Result<[u16; 2], Refusal> {
    for _ in 0..200 {
        let r = u16::from_be_bytes(burrow_core::random_bytes::<2>());
        let a = 20000 + (r % 20000) * 2;
        let pair = [a, a + 1];
        if pair.iter().any(|p| taken.contains(p)) {
            continue;
        }
        if pair
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return Ok(pair);
        }
    }
    Err(Refusal::new(
        Kind::Unavailable,
        "no free port pair for the node on 127.0.0.1",
    ))
}

/// Node names are ids in URLs and key comments: 1–63 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(bad_request(format!(
            "invalid node name {name:?}: use 1-63 letters, digits, '.', '_' or '-'"
        )))
    }
}

mod limit;
#[cfg(test)]
mod tests;
