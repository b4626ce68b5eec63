//! `GET /api/v1/status`: the fleet at a glance (the seed's getSystemStatus): node counts by state,
//! how many of `--max-nodes` are used, alerts firing, job parts queued and running, and whether the
//! gateway's own data dir has room. The keys scripts read since the first version (`version`,
//! `uptime_s`, `nodes.*`, `ssh`, `sshd`) keep their meaning.

use std::path::Path;

use serde_json::{json, Value};

use super::routes::Req;
use super::{Ctx, Reply};
use crate::refusal::Refusal;

pub fn status(ctx: &Ctx, _req: &Req) -> Result<Reply, Refusal> {
    let mut nodes: serde_json::Map<String, Value> = ctx
        .health
        .counts()
        .into_iter()
        .map(|(state, n)| (state.as_str().to_string(), json!(n)))
        .collect();
    let total: u64 = nodes.values().filter_map(Value::as_u64).sum();
    nodes.insert("total".into(), json!(total));
    let firing = ctx.health.firing_count();
    let db = ctx.registry.store().path().to_path_buf();
    Ok(Reply::Json(
        200,
        json!({
            "version": burrow_core::VERSION,
            "uptime_s": ctx.started.elapsed().as_secs(),
            "nodes": nodes,
            "max_nodes": ctx.pairing.max_nodes(),
            "nodes_used": ctx.pairing.nodes_used(),
            "alerts": {"firing": firing},
            "jobs": {"queued": ctx.jobs.queue_depth(), "running": ctx.jobs.running()},
            "data_dir": data_dir(&db),
            "ssh": ctx.contact,
            "sshd": (ctx.sshd_status)(),
        }),
    ))
}

/// Room on the data dir's filesystem (`statvfs`) and the store's size on disk (the database and
/// its write-ahead log). A figure that cannot be read is left out, with `error` saying why.
fn data_dir(db: &Path) -> Value {
    let dir = db.parent().unwrap_or(Path::new("."));
    let mut out = json!({"path": dir});
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let block = s.f_frsize.max(1);
            out["total_bytes"] = json!(s.f_blocks.saturating_mul(block));
            out["available_bytes"] = json!(s.f_bavail.saturating_mul(block));
            out["free_bytes"] = json!(s.f_bfree.saturating_mul(block));
            out["inodes_total"] = json!(s.f_files);
            out["inodes_free"] = json!(s.f_ffree);
        }
        Err(e) => out["error"] = json!(format!("statvfs {}: {e}", dir.display())),
    }
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    out["store_bytes"] = json!(size(db) + size(Path::new(&wal)));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_dir_reports_room_and_store_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("burrow.db");
        std::fs::write(&db, vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("burrow.db-wal"), vec![0u8; 100]).unwrap();
        let v = super::data_dir(&db);
        assert_eq!(v["store_bytes"], 4196);
        assert!(v["total_bytes"].as_u64().unwrap() > 0, "{v}");
        assert!(v["available_bytes"].as_u64().unwrap() <= v["total_bytes"].as_u64().unwrap());
        assert!(v["inodes_total"].is_u64(), "{v}");
        assert!(v.get("error").is_none());
        let gone = super::data_dir(&dir.path().join("missing/burrow.db"));
        assert!(
            gone["error"].as_str().unwrap().contains("statvfs"),
            "{gone}"
        );
        assert_eq!(gone["store_bytes"], 0);
    }
}
