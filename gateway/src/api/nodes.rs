//! Read and admin routes for nodes and approvals (the fleet's status: `status.rs`; join and API
//! tokens: `tokens.rs`).

use serde::Deserialize;
use serde_json::{json, Value};

use burrow_core::identity::PublicKey;
use burrow_core::protocol::bye;

use super::routes::Req;
use super::{parse_body, Ctx, Reply};
use crate::health::NodeState;
use crate::refusal::{bad_request, not_found, Refusal};
use crate::registry::{rfc3339, NodeRecord};

/// `GET /api/v1/nodes?status=&label=k=v&capability=c`: every filter given must hold (labels and
/// capabilities may repeat).
pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let mut status: Option<String> = None;
    let mut selector = crate::jobs::target::Selector::default();
    for (key, value) in super::query(&req.call.path)? {
        match key.as_str() {
            "status" => {
                if !NodeState::ALL.iter().any(|s| s.as_str() == value) {
                    let names: Vec<&str> = NodeState::ALL.iter().map(|s| s.as_str()).collect();
                    return Err(bad_request(format!(
                        "status is one of {}",
                        names.join(", ")
                    )));
                }
                status = Some(value);
            }
            "label" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| bad_request("label=KEY=VALUE, as in label=site=home"))?;
                selector.labels.insert(k.into(), v.into());
            }
            "capability" => selector.capabilities.push(value),
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?} (status, label, capability)"
                )))
            }
        }
    }
    // Collected first: `node_json` asks the health module, which reads the registry too.
    let matching: Vec<NodeRecord> = ctx
        .registry
        .read()
        .nodes
        .values()
        .filter(|n| selector.matches(n))
        .cloned()
        .collect();
    let nodes: Vec<Value> = matching
        .iter()
        .map(|n| node_json(ctx, n))
        .filter(|n| status.as_deref().is_none_or(|s| n["status"] == s))
        .collect();
    Ok(Reply::Json(200, json!({ "nodes": nodes })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    /// Labels to set; a `null` value removes the label.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, Option<String>>,
    /// Replaces the capabilities when given.
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

/// `PATCH /api/v1/nodes/{id}`: an operator changes a node's labels and capabilities (the node itself
/// cannot: they are fixed when it is approved, so it cannot make itself a target). Audited.
pub fn label(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let id = req.param(0).to_string();
    let body: LabelBody = parse_body(&req.call.body)?;
    if body.labels.is_empty() && body.capabilities.is_none() {
        return Err(bad_request(
            "nothing to change: give \"labels\" (null removes one) and/or \"capabilities\"",
        ));
    }
    let word = |w: &str, what: &str| -> Result<(), Refusal> {
        let ok = !w.is_empty()
            && w.len() <= 64
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(bad_request(format!(
                "{what} {w:?}: 1 to 64 letters, digits or -_./"
            )))
        }
    };
    for (k, v) in &body.labels {
        word(k, "label key")?;
        if let Some(v) = v {
            if v.len() > 256 || v.contains(['\n', '\0', ',']) {
                return Err(bad_request(format!(
                    "label {k}: the value is at most 256 bytes, without newlines or commas"
                )));
            }
        }
    }
    for c in body.capabilities.iter().flatten() {
        word(c, "capability")?;
    }
    let node = ctx.registry.update(|s| {
        let node = s
            .nodes
            .get_mut(&id)
            .ok_or_else(|| not_found(format!("no node {id:?}")))?;
        for (k, v) in &body.labels {
            match v {
                Some(v) => node.labels.insert(k.clone(), v.clone()),
                None => node.labels.remove(k),
            };
        }
        if let Some(caps) = &body.capabilities {
            node.capabilities.clone_from(caps);
        }
        Ok::<_, Refusal>(node.clone())
    })?;
    ctx.pairing.audit().record(
        &req.caller,
        "node.label",
        &node.id,
        json!({"labels": node.labels, "capabilities": node.capabilities}),
    );
    Ok(Reply::Json(200, node_json(ctx, &node)))
}

pub fn show(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let id = req.param(0);
    let node = ctx.registry.read().nodes.get(id).cloned();
    let node = node.ok_or_else(|| not_found(format!("no node {id:?}")))?;
    Ok(Reply::Json(200, node_json(ctx, &node)))
}

pub fn approve(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let node = ctx.pairing.approve(req.param(0), &req.caller)?;
    Ok(Reply::Json(200, node_json(ctx, &node)))
}

pub fn reject(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let node = ctx.pairing.reject(req.param(0), &req.caller)?;
    end_access(ctx, &node, bye::REJECTED, "rejected by an operator");
    Ok(Reply::Json(200, node_json(ctx, &node)))
}

/// `DELETE /api/v1/nodes/{id}`: the node is gone for good (see `Pairing::revoke`).
pub fn revoke(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let node = ctx.pairing.revoke(req.param(0), &req.caller)?;
    end_access(
        ctx,
        &node,
        bye::REVOKED,
        "revoked by an operator; join again to come back",
    );
    Ok(Reply::Json(
        200,
        json!({"id": node.id, "fingerprint": node.fingerprint, "revoked": true}),
    ))
}

/// Once the registry and sshd's key files no longer let `node` in (`Pairing::reject`/`revoke`
/// ran `sync_keys`): cut what it still holds, its link (the agent is told `code`) with the commands
/// on it, and every sshd session and listener of its key, a thief's included.
fn end_access(ctx: &Ctx, node: &NodeRecord, code: &str, reason: &str) {
    // Jobs first: their parts end with the reason, before the agent's answer to the goodbye (it
    // kills what it ran) could end them as a plain failure.
    ctx.jobs.cut_off(&node.id);
    ctx.bus.cut_off(&node.id, code, reason);
    let ports = node.ports.map(|p| p.to_vec()).unwrap_or_default();
    let cut = PublicKey::from_openssh(&node.public_key)
        .map_err(anyhow::Error::from)
        .and_then(|key| (ctx.cut_off)(&key, &ports));
    match cut {
        Ok(n) => log::info!("node {}: {n} sshd session(s) killed", node.id),
        Err(e) => log::error!("cutting off node {}'s sshd sessions: {e:#}", node.id),
    }
}

/// A node as the API shows it.
fn node_json(ctx: &Ctx, n: &NodeRecord) -> Value {
    let live = ctx.registry.live(&n.id);
    let state = ctx.health.state(&n.id);
    let status = state.as_ref().map_or("offline", |s| s.state.as_str());
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "status": status,
        "capabilities": n.capabilities,
        "labels": n.labels,
        "last_seen": live.last_seen.map(rfc3339),
        "online_since": live.online_since.filter(|_| status == "online").map(rfc3339),
        "state_since": state.as_ref().and_then(|s| s.since).map(rfc3339),
        "state_reason": state.as_ref().map(|s| s.reason.as_str()).filter(|r| !r.is_empty()),
        "fingerprint": n.fingerprint,
        "os": n.os,
        "arch": n.arch,
        "version": live.agent_version.as_ref().unwrap_or(&n.version),
        "ports": n.ports,
        "created_at": rfc3339(n.created_at),
        "approved_at": n.approved_at.map(rfc3339),
        "metrics": live.metrics,
        "policy": live.policy,
        "services": live.services,
    })
}
