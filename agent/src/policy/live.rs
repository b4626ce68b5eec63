//! The policy in force: loaded at start, swapped on SIGHUP by the `policy-reload` thread (a bad
//! file keeps the old one and is reported as a fault), and the refusal log `policy.log`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use burrow_core::api::{fault, Fault, PolicySummary};

use super::{Policy, Refused};

/// The policy in force, its file, the last failed reload, and the refusal log.
struct Current {
    policy: Arc<Policy>,
    file: PathBuf,
    reload_error: Option<String>,
    log: Option<PathBuf>,
}

static CURRENT: RwLock<Option<Current>> = RwLock::new(None);
/// One writer at a time appends to policy.log.
static LOG_LOCK: Mutex<()> = Mutex::new(());

/// The policy in force (allow-all before [`install`], e.g. in unit tests).
pub fn current() -> Arc<Policy> {
    CURRENT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map_or_else(|| Arc::new(Policy::default()), |c| c.policy.clone())
}

/// Loads the policy at start (an error stops the agent) and reloads it on every SIGHUP (an error
/// keeps the old one, is logged and reported as a fault until a reload succeeds).
pub fn install(file: Option<&Path>, data_dir: &Path) -> anyhow::Result<()> {
    let (path, required) = match file {
        Some(p) => (p.to_path_buf(), true),
        None => (data_dir.join("policy.toml"), false),
    };
    let policy = Policy::load(&path, required)?;
    log::info!(
        "policy {}: mode {}, {} rule(s)",
        path.display(),
        policy.mode.name(),
        policy.rules.len()
    );
    *CURRENT.write().unwrap_or_else(PoisonError::into_inner) = Some(Current {
        policy: Arc::new(policy),
        file: path.clone(),
        reload_error: None,
        log: Some(data_dir.join("policy.log")),
    });
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("policy-reload".into())
        // Runs for the life of the process, woken by each SIGHUP.
        .spawn(move || {
            for _ in signals.forever() {
                reload(&path, required);
            }
        })
        .context("starting the policy reload thread")?;
    Ok(())
}

fn reload(path: &Path, required: bool) {
    let loaded = Policy::load(path, required);
    let mut guard = CURRENT.write().unwrap_or_else(PoisonError::into_inner);
    let Some(current) = guard.as_mut() else {
        return;
    };
    match loaded {
        Ok(policy) => {
            log::info!(
                "policy reloaded from {}: mode {}, {} rule(s)",
                current.file.display(),
                policy.mode.name(),
                policy.rules.len()
            );
            current.policy = Arc::new(policy);
            current.reload_error = None;
        }
        Err(e) => {
            log::error!("policy reload failed, keeping the previous policy: {e:#}");
            current.reload_error = Some(format!("{e:#}"));
        }
    }
}

/// The summary of the policy in force, with the last reload's error if it failed.
pub fn summary() -> PolicySummary {
    let guard = CURRENT.read().unwrap_or_else(PoisonError::into_inner);
    match guard.as_ref() {
        Some(c) => PolicySummary {
            reload_error: c.reload_error.clone(),
            ..c.policy.summary()
        },
        None => Policy::default().summary(),
    }
}

/// [`fault::POLICY_INVALID`] while the last reload failed (the previous policy is still in force).
pub fn fault() -> Option<Fault> {
    let guard = CURRENT.read().unwrap_or_else(PoisonError::into_inner);
    let why = guard.as_ref()?.reload_error.clone()?;
    Some(Fault {
        code: fault::POLICY_INVALID.into(),
        message: format!("{why} (the previous policy stays in force)"),
    })
}

/// Appends one refusal to `policy.log` (one JSON line, fsynced) and the agent's log.
pub fn record(what: serde_json::Value, refused: &Refused) {
    log::warn!("{}", refused.message());
    let path = CURRENT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|c| c.log.clone());
    let Some(path) = path else { return };
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let line = serde_json::json!({
        "at_ms": at_ms,
        "rule": refused.rule,
        "reason": refused.detail,
        "request": what,
    });
    let _guard = LOG_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()
        });
    if let Err(e) = written {
        log::error!("writing {}: {e}", path.display());
    }
}
