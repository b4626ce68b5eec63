//! Admin routes for credentials: API bearer tokens (`/api/v1/tokens`) and join tokens
//! (`/api/v1/join-tokens`): mint, list (metadata only, never a token or a secret), revoke.
//!
//! Every minted API token is recorded in the store (`store::tokens`), whoever asked (a token over
//! TCP, or a Unix user on `api.sock`). Revoking one puts its `jti` in the registry's `revoked_jtis`
//! (durable before the answer, in memory for the per-request check), so the very next request with
//! it is 401, also after a restart. Revoking twice answers 200 again (`"already_revoked": true`)
//! and keeps the first `revoked_at`. The tokens a revoked token minted stay valid: revoke each.
//!
//! Revoking a join token removes its enrollment key from sshd's key file at once, and pairing
//! refuses its secret. Nodes that already joined with it keep their access.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::{Caller, Req};
use super::{parse_body, Ctx, Reply};
use crate::refusal::{bad_request, not_found, Refusal};
use crate::registry::{now, rfc3339, JoinTokenRecord};
use crate::store::tokens::{self as rows, TokenRow};
use crate::tokens::Role;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    role: String,
    #[serde(default)]
    ttl: Option<String>,
    /// Who the token is for (the JWT subject); `subject` is the older name of the field.
    #[serde(default, alias = "subject")]
    name: Option<String>,
}

/// Who minted or revoked something: the token's name and jti, or the Unix user on `api.sock`.
fn who(caller: &Caller) -> String {
    match &caller.token {
        Some(t) if !t.jti.is_empty() => format!("{} (jti {})", t.subject, t.jti),
        _ => caller.actor().to_string(),
    }
}

/// `POST /api/v1/tokens {"role", "ttl", "name"}`: the token (shown this once) and its metadata.
pub fn create(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: TokenBody = parse_body(&req.call.body)?;
    let role = Role::parse_issuable(&body.role).map_err(|e| bad_request(e.to_string()))?;
    let ttl = parse_ttl(body.ttl.as_deref(), "24h")?;
    crate::tokens::check_api_ttl(ttl).map_err(bad_request)?;
    let name = body
        .name
        .unwrap_or_else(|| format!("by-{}", req.caller.actor()));
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(bad_request(
            "name: 1 to 128 bytes without control characters",
        ));
    }
    let (token, jti) = ctx.pairing.tokens.issue(&name, role, ttl)?;
    let created_at = now();
    let row = TokenRow {
        jti: jti.clone(),
        name: name.clone(),
        role: role.as_str().to_string(),
        created_at,
        expires_at: ctx.pairing.tokens.verify(&token)?.expires_at,
        created_by: who(&req.caller),
        revoked_at: None,
    };
    let exp = row.expires_at;
    // Recorded durably before the token is handed out: no token exists that the listing lacks.
    ctx.registry
        .store()
        .write(move |tx| rows::insert(tx, &row, created_at))?;
    ctx.pairing.audit().record(
        &req.caller,
        "token.create",
        &jti,
        json!({"role": role, "name": name, "ttl_s": ttl.as_secs(), "exp": exp}),
    );
    Ok(Reply::Json(
        201,
        json!({"token": token, "jti": jti, "exp": rfc3339(exp), "name": name,
               "subject": name, "role": role}),
    ))
}

/// A recorded token as the API lists it: `state` is `active`, `expired` or `revoked`.
fn token_json(row: &TokenRow, revoked: bool, now: u64) -> Value {
    let state = if row.revoked_at.is_some() || revoked {
        "revoked"
    } else if row.expires_at <= now {
        "expired"
    } else {
        "active"
    };
    json!({
        "jti": row.jti,
        "name": row.name,
        "role": row.role,
        "created_at": rfc3339(row.created_at),
        "exp": rfc3339(row.expires_at),
        "revoked_at": row.revoked_at.map(rfc3339),
        "created_by": row.created_by,
        "state": state,
    })
}

/// `GET /api/v1/tokens`: every recorded token, newest first, metadata only. Expired ones are
/// listed as such for 30 days past their expiry, then pruned.
pub fn list(ctx: &Ctx, _req: &Req) -> Result<Reply, Refusal> {
    let all = ctx.registry.store().read(rows::list)?;
    let now = now();
    let revoked = ctx.registry.read().revoked_jtis.clone();
    let tokens: Vec<Value> = all
        .iter()
        .map(|r| token_json(r, revoked.contains_key(&r.jti), now))
        .collect();
    Ok(Reply::Json(200, json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/tokens/{jti}`: refused from the next request on, also after a restart.
pub fn revoke(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let jti = req.param(0).to_string();
    let lookup = jti.clone();
    let row = ctx
        .registry
        .store()
        .read(move |c| rows::get(c, &lookup))?
        .ok_or_else(|| not_found(format!("no API token with jti {jti:?}")))?;
    let already = row.revoked_at.is_some();
    // The registry first: once this returns the token is refused, and a crash before the row's
    // `revoked_at` is written leaves it refused (the listing reads both).
    ctx.registry.update(|s| {
        s.revoked_jtis.insert(jti.clone(), row.expires_at);
        Ok::<_, Refusal>(())
    })?;
    let at = now();
    let target = jti.clone();
    let row = ctx
        .registry
        .store()
        .write(move |tx| rows::revoke(tx, &target, at))?
        .ok_or_else(|| not_found(format!("no API token with jti {jti:?}")))?;
    ctx.pairing.audit().record(
        &req.caller,
        "token.revoke",
        &jti,
        json!({"name": row.name, "role": row.role, "already_revoked": already}),
    );
    let mut answer = token_json(&row, true, at);
    answer["already_revoked"] = json!(already);
    Ok(Reply::Json(200, answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    /// Duration such as "1h".
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    uses: Option<u32>,
    #[serde(default)]
    manual: bool,
}

pub fn create_join(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: JoinBody = parse_body(&req.call.body)?;
    let ttl = parse_ttl(body.ttl.as_deref(), "1h")?;
    let (join, record) =
        ctx.pairing
            .create_join(ttl, body.uses.unwrap_or(1), body.manual, &req.caller)?;
    Ok(Reply::Json(
        201,
        json!({"join": join, "id": record.id, "expires_at": rfc3339(record.expires_at),
               "uses": record.uses, "manual": record.manual}),
    ))
}

/// A join token as the API lists it (never its secret or enrollment key).
fn join_json(t: &JoinTokenRecord, now: u64) -> Value {
    let state = if t.revoked {
        "revoked"
    } else if now >= t.expires_at {
        "expired"
    } else if t.used >= t.uses {
        "used-up"
    } else {
        "active"
    };
    json!({
        "id": t.id,
        "uses": t.uses,
        "used": t.used,
        "uses_left": t.uses.saturating_sub(t.used),
        "expires_at": rfc3339(t.expires_at),
        "manual": t.manual,
        "created_at": rfc3339(t.created_at),
        "revoked": t.revoked,
        "state": state,
    })
}

/// `GET /api/v1/join-tokens`: newest first; expired ones are kept (and listed) for 7 days.
pub fn list_joins(ctx: &Ctx, _req: &Req) -> Result<Reply, Refusal> {
    let now = now();
    let tokens: Vec<Value> = {
        let state = ctx.registry.read();
        let mut all: Vec<&JoinTokenRecord> = state.join_tokens.iter().collect();
        all.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        all.into_iter().map(|t| join_json(t, now)).collect()
    };
    Ok(Reply::Json(200, json!({ "join_tokens": tokens })))
}

/// `DELETE /api/v1/join-tokens/{id}`: the token cannot pair any more and its enrollment key leaves
/// sshd's key file before the answer. Revoking twice answers 200 again (`"already_revoked"`).
pub fn revoke_join(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let id = req.param(0).to_string();
    let (record, already) = ctx.registry.update(|s| {
        let t = s
            .join_tokens
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| not_found(format!("no join token {id:?}")))?;
        let already = t.revoked;
        t.revoked = true;
        Ok::<_, Refusal>((t.clone(), already))
    })?;
    ctx.pairing.sync_keys()?;
    ctx.pairing.audit().record(
        &req.caller,
        "join.revoke",
        &id,
        json!({"already_revoked": already, "used": record.used, "uses": record.uses}),
    );
    let mut answer = join_json(&record, now());
    answer["already_revoked"] = json!(already);
    Ok(Reply::Json(200, answer))
}

fn parse_ttl(text: Option<&str>, default: &str) -> Result<Duration, Refusal> {
    humantime::parse_duration(text.unwrap_or(default))
        .map_err(|e| bad_request(format!("ttl: {e} (examples: 30m, 1h, 7d)")))
}
