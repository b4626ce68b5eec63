//! Routes an enrolling agent calls through its direct-tcpip channel: hello (the gateway proves its
//! key), pair (the node proves its key). Approved nodes reach no API at all: their heartbeats ride
//! their secure link (`bus`).

use burrow_core::api::{HelloRequest, SignedRequest};
use serde_json::json;

use super::routes::Req;
use super::{parse_body, Ctx, Reply};
use crate::refusal::Refusal;

pub fn hello(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: HelloRequest = parse_body(&req.call.body)?;
    Ok(Reply::Json(200, json!(ctx.pairing.hello(&body.nonce)?)))
}

pub fn pair(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: SignedRequest = parse_body(&req.call.body)?;
    Ok(Reply::Json(200, json!(ctx.pairing.pair(&body)?)))
}
