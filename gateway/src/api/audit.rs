//! `GET /api/v1/audit?since=&node=&actor=&action=&cursor=&limit=`: pages through the audit trail,
//! oldest first, `{"entries": […], "next": <seq or null>}` (pass `next` back as `cursor`).

use serde_json::json;

use super::{query, Ctx, Reply, Req};
use crate::audit::query::{Filter, DEFAULT_LIMIT, MAX_LIMIT};
use crate::refusal::{bad_request, Kind, Refusal};

pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let filter = parse(&req.call.path)?;
    let page = ctx
        .pairing
        .audit()
        .query(&filter)
        .map_err(|e| Refusal::new(Kind::Internal, format!("reading the audit log: {e:#}")))?;
    Ok(Reply::Json(
        200,
        json!({"entries": page.entries, "next": page.next}),
    ))
}

fn parse(path: &str) -> Result<Filter, Refusal> {
    let mut f = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    for (k, v) in query(path)? {
        let number = |what: &str| {
            v.parse::<u64>()
                .map_err(|_| bad_request(format!("{what} must be a whole number, not {v:?}")))
        };
        match k.as_str() {
            "since" => {
                f.since = Some(crate::audit::query::parse_since(&v).map_err(|_| {
                    bad_request(format!(
                        "since must be a time (2026-12-01T10:00:00Z), Unix seconds or an age \
                         (2h), not {v:?}"
                    ))
                })?)
            }
            "node" if !v.is_empty() => f.node = Some(v),
            "actor" if !v.is_empty() => f.actor = Some(v),
            "action" if !v.is_empty() => f.action = Some(v),
            "cursor" => f.cursor = Some(number("cursor")?),
            "limit" => {
                let n = number("limit")?;
                if n == 0 || n > MAX_LIMIT as u64 {
                    return Err(bad_request(format!(
                        "limit must be between 1 and {MAX_LIMIT}"
                    )));
                }
                f.limit = n as usize;
            }
            "node" | "actor" | "action" => {
                return Err(bad_request(format!("{k} is empty")));
            }
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?}; known: since, node, actor, action, cursor, limit"
                )))
            }
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_are_400() {
        for bad in [
            "/api/v1/audit?limit=0",
            "/api/v1/audit?limit=1001",
            "/api/v1/audit?limit=x",
            "/api/v1/audit?cursor=-1",
            "/api/v1/audit?since=yesterday-ish",
            "/api/v1/audit?node=",
            "/api/v1/audit?colour=blue",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind.status(), 400, "{bad}: {}", err.message);
        }
        let f = parse("/api/v1/audit?node=pi-1&actor=alice&limit=5&cursor=7&since=0").unwrap();
        assert_eq!(
            (
                f.node.as_deref(),
                f.actor.as_deref(),
                f.limit,
                f.cursor,
                f.since
            ),
            (Some("pi-1"), Some("alice"), 5, Some(7), Some(0))
        );
    }
}
