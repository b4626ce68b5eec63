//! Routes the agent calls through its direct-tcpip channel: hello (the gateway proves its key), pair
//! (the node proves its key), heartbeat (node token).

use burrow_core::api::{Heartbeat, HeartbeatReply, HelloRequest, SignedRequest};
use serde_json::json;

use super::{authenticate, parse_body, Call, Ctx, Reply};
use crate::pairing::NODE_TOKEN_TTL;
use crate::refusal::{forbidden, Kind, Refusal};
use crate::registry::{now, Approval};
use crate::tokens::Role;

pub fn route(ctx: &Ctx, call: &Call, method: &str, action: &str) -> Result<Reply, Refusal> {
    if method != "POST" {
        return Err(Refusal::new(
            Kind::BadRequest,
            format!("{method} is not allowed here; use POST"),
        ));
    }
    match action {
        "hello" => {
            let body: HelloRequest = parse_body(&call.body)?;
            Ok(Reply::Json(200, json!(ctx.pairing.hello(&body.nonce)?)))
        }
        "pair" => {
            let body: SignedRequest = parse_body(&call.body)?;
            Ok(Reply::Json(200, json!(ctx.pairing.pair(&body)?)))
        }
        "heartbeat" => heartbeat(ctx, call),
        other => Err(Refusal::new(
            Kind::NotFound,
            format!("no agent route {other:?}"),
        )),
    }
}

fn heartbeat(ctx: &Ctx, call: &Call) -> Result<Reply, Refusal> {
    let who = authenticate(ctx, call)?;
    if who.role != Role::Node {
        return Err(forbidden("heartbeats need a node token"));
    }
    let approved = ctx
        .registry
        .read()
        .nodes
        .get(&who.subject)
        .is_some_and(|n| n.approval == Approval::Approved);
    if !approved {
        return Err(forbidden(format!("node {:?} is not approved", who.subject)));
    }
    let beat: Heartbeat = parse_body(&call.body)?;
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
