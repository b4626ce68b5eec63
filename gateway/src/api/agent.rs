//! Routes the agent calls through its direct-tcpip channel: hello (the gateway proves its key), pair
//! (the node proves its key), heartbeat (node token).

use burrow_core::api::{Heartbeat, HeartbeatReply, HelloRequest, SignedRequest};
use serde_json::json;

use super::routes::Req;
use super::{parse_body, Ctx, Reply};
use crate::pairing::NODE_TOKEN_TTL;
use crate::refusal::{forbidden, Refusal};
use crate::registry::{now, Approval};
use crate::tokens::Role;

pub fn hello(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: HelloRequest = parse_body(&req.call.body)?;
    Ok(Reply::Json(200, json!(ctx.pairing.hello(&body.nonce)?)))
}

pub fn pair(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: SignedRequest = parse_body(&req.call.body)?;
    Ok(Reply::Json(200, json!(ctx.pairing.pair(&body)?)))
}

/// The route's permission already made sure the token is a node's.
pub fn heartbeat(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let who = req.who()?;
    let approved = ctx
        .registry
        .read()
        .nodes
        .get(&who.subject)
        .is_some_and(|n| n.approval == Approval::Approved);
    if !approved {
        return Err(forbidden(format!("node {:?} is not approved", who.subject)));
    }
    let beat: Heartbeat = parse_body(&req.call.body)?;
    let t = now();
    ctx.registry.record_heartbeat(&who.subject, beat);
    if !ctx.bus.is_linked(&who.subject) {
        ctx.bus.dial(&who.subject);
    }
    // Refresh the node's token in the second half of its life.
    let token = if who.expires_at.saturating_sub(t) < NODE_TOKEN_TTL.as_secs() / 2 {
        Some(
            ctx.pairing
                .tokens
                .issue(&who.subject, Role::Node, NODE_TOKEN_TTL)?
                .0,
        )
    } else {
        None
    };
    Ok(Reply::Json(200, json!(HeartbeatReply { token })))
}
