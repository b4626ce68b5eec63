//! The `"tty"` field of an exec body, and the sizes `POST /api/v1/jobs/{id}/resize` takes.

use burrow_core::protocol::Tty;
use serde_json::Value;

use crate::refusal::{bad_request, Refusal};

/// The largest terminal side accepted (rows or columns).
pub const MAX_TTY_SIDE: u16 = 10_000;

/// `"tty": true` (80×24), `false`, or `{"rows": R, "cols": C, "term": T}`.
pub(super) fn parse_tty(v: &Value) -> Result<Option<Tty>, Refusal> {
    match v {
        Value::Bool(false) | Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some(Tty {
            rows: 24,
            cols: 80,
            term: None,
        })),
        Value::Object(o) => {
            let allowed = ["rows", "cols", "term"];
            if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(bad_request(format!(
                    "tty: unknown field {k:?} (rows, cols, term)"
                )));
            }
            let (rows, cols) = terminal_size(o.get("rows"), o.get("cols"), "tty")?;
            let term = match o.get("term") {
                None | Some(Value::Null) => None,
                Some(Value::String(t))
                    if !t.is_empty()
                        && t.len() <= 64
                        && t.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Some(t.clone())
                }
                Some(_) => return Err(bad_request("tty.term is a terminal name (xterm-256color)")),
            };
            Ok(Some(Tty { rows, cols, term }))
        }
        _ => Err(bad_request(
            "tty is true or {\"rows\": R, \"cols\": C, \"term\": T}",
        )),
    }
}

/// Rows and columns, each 1 to [`MAX_TTY_SIDE`]; `what` names the field in the refusal.
pub fn terminal_size(
    rows: Option<&Value>,
    cols: Option<&Value>,
    what: &str,
) -> Result<(u16, u16), Refusal> {
    let side = |v: Option<&Value>, name: &str| {
        v.and_then(Value::as_u64)
            .filter(|n| (1..=u64::from(MAX_TTY_SIDE)).contains(n))
            .map(|n| n as u16)
            .ok_or_else(|| {
                bad_request(format!(
                    "{what}: \"{name}\" must be a whole number from 1 to {MAX_TTY_SIDE}"
                ))
            })
    };
    Ok((side(rows, "rows")?, side(cols, "cols")?))
}

/// A lane no other job uses.
pub(super) fn tty_lane() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("tty:{}-{n}", std::process::id())
}
