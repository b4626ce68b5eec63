//! `gateway serve`: brings the gateway up in a safe order (API port first, then keys, registry, sshd,
//! links), writes `run.json` so the CLI can find the API, and takes it all down on SIGTERM/SIGINT.
//! SIGHUP reloads the alert rules (a bad file keeps the rules in force, and says why); links and
//! everything else stay as they are.
//!
//! Stopping: the API takes no new request, running commands get `--shutdown-grace` (10 s) to finish,
//! then the links are closed, which cancels what is still running on the nodes (the agents kill those
//! process groups; their callers get `node_offline`-style "link closed" answers), and the gateway exits.
//! It used to wait for the longest command, up to days, until systemd SIGKILLed it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burrow_core::identity::Identity;
use serde_json::json;

use crate::api::{Api, Ctx};
use crate::audit::AuditLog;
use crate::bus::Bus;
use crate::cli::ServeArgs;
use crate::pairing::{Contact, Pairing};
use crate::registry::Registry;
use crate::sshd::{self, SshdSettings, Supervisor};
use crate::{health, runinfo};

pub fn run(data_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let tls = tls_config(&args)?;
    if !args.api.ip().is_loopback() && tls.is_none() && !args.insecure {
        bail!(
            "refusing to serve the API on {} without TLS: give it --tls-cert and --tls-key, keep it \
             on 127.0.0.1 (reach it with ssh -L), or pass --insecure if something else protects it",
            args.api
        );
    }
    if args.dead_after < Duration::from_secs(2) || args.dead_after > Duration::from_secs(600) {
        bail!(
            "--dead-after {} is out of range: 2s to 10m",
            humantime::format_duration(args.dead_after)
        );
    }
    let rules_file = args.alert_rules.clone().or_else(default_rules_file);
    let rules = match &rules_file {
        Some(path) => health::rules::Rules::load(path)?,
        None => health::rules::Rules::builtin(),
    };
    burrow_core::atomic_file::private_dir(data_dir)?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let (server, api_addr, pairing_port) = Api::bind(args.api, tls, &data_dir)?;
    let server = match args.metrics_listen {
        Some(addr) => server.with_metrics(addr, args.insecure)?,
        None => server,
    };
    let host = burrow_core::hostname("localhost");
    let (identity, created) = Identity::load_or_generate(
        &data_dir.join("gateway.key"),
        &format!("burrow-gateway@{host}"),
    )?;
    if created {
        log::info!("created gateway key {}", identity.public().fingerprint());
    }
    let ssh_addr = if args.ssh.port() == 0 {
        free_port(args.ssh)?
    } else {
        args.ssh
    };
    let settings = SshdSettings {
        dir: data_dir.join("sshd"),
        listen: ssh_addr,
        binary: args.sshd.clone(),
        max_sessions_hint: 256,
        login_user: sshd::current_user()?,
        enroll_user: match args.system_sshd {
            true => Some(sshd::required_enroll_user()?),
            false => sshd::managed_enroll_user()?,
        },
        api_port: pairing_port,
        dead_after: args.dead_after,
    };
    // Either way the gateway writes the node key lines to <data>/sshd/authorized_keys; with the
    // system's sshd, its `Match User` block (`gateway install --system-sshd`) points there.
    let host_fingerprint = if args.system_sshd {
        burrow_core::atomic_file::private_dir(&settings.dir)?;
        system_host_fingerprint(&args.host_key)?
    } else {
        let fingerprint = sshd::ensure_host_key(&settings)?;
        sshd::write_config(&settings)?;
        fingerprint
    };
    let registry = Arc::new(Registry::open(&data_dir)?);
    let audit_head: Arc<dyn crate::audit::HeadStore> = Arc::new(registry.store().clone());
    let audit_log = AuditLog::open_with(
        &data_dir.join("audit.log"),
        args.audit_settings(),
        Some(audit_head),
    )?;
    let ssh_public = args
        .ssh_public
        .clone()
        .unwrap_or_else(|| match ssh_addr.ip() {
            _ if args.system_sshd => format!("{host}:22"),
            ip if ip.is_unspecified() => format!("{host}:{}", ssh_addr.port()),
            _ => ssh_addr.to_string(),
        });
    let contact = Contact {
        ssh_public: ssh_public.clone(),
        ssh_user: settings.login_user.clone(),
        enroll_user: settings.enroll_user.clone(),
        host_fingerprint: host_fingerprint.clone(),
        api_port: pairing_port,
    };
    let key_settings = settings.clone();
    let pairing = Arc::new(
        Pairing::new(
            identity.clone(),
            registry.clone(),
            contact,
            Box::new(move |k| sshd::write_authorized_keys(&key_settings, &k.nodes, &k.enrollment)),
            audit_log.handle(),
        )?
        .with_max_nodes(args.max_nodes),
    );
    let supervisor = match args.system_sshd {
        true => None,
        false => Some(Arc::new(Supervisor::start(settings.clone())?)),
    };
    let bus = Arc::new(Bus::new(identity, registry.clone()));
    let store = registry.store().clone();
    let jobs = crate::jobs::Jobs::new(
        bus.clone(),
        registry.clone(),
        store,
        crate::jobs::Limits {
            output_per_node: args.max_answer_bytes,
        },
    )?;
    let ends = audit_log.handle();
    // Queued, not waited for: the hook runs on the jobs engine's path (the link's reader, a
    // whole answer's worker), where an fsync per job would hold every answer back. What an answer
    // acknowledges, the `exec` entry, is durable before it goes out; the end follows in the next
    // group commit.
    jobs.on_end(Box::new(move |job| {
        if let Some((action, detail)) = crate::audit::ends::of(job) {
            drop(ends.queue(&job.meta.actor, action, &job.meta.target, detail));
        }
    }));
    // A weak handle, so `serve` stays the only owner and `stop()` (which also kills sshd's
    // sessions) runs at shutdown.
    let status_of = supervisor.as_ref().map(Arc::downgrade);
    let cut_of = supervisor.as_ref().map(Arc::downgrade);
    let health = health::Health::new(registry.clone(), bus.clone());
    health.set_rules(rules);
    let contact_json =
        json!({"listen": ssh_addr, "public": ssh_public, "host_fingerprint": host_fingerprint});
    let ctx = Arc::new(Ctx {
        registry: registry.clone(),
        pairing: pairing.clone(),
        bus: bus.clone(),
        jobs: jobs.clone(),
        health: health.clone(),
        started: Instant::now(),
        answer_limit: args.max_answer_bytes,
        draining: Default::default(),
        cut_off: Box::new(move |key, ports| {
            let supervisor = cut_of.as_ref().and_then(std::sync::Weak::upgrade);
            sshd::cut_off(&settings, supervisor.as_deref(), key, ports)
        }),
        sshd_status: Box::new(move || match status_of.as_ref().map(|w| w.upgrade()) {
            None => json!({"mode": "system"}),
            Some(Some(sup)) => {
                let s = sup.status();
                json!({"mode": "managed", "running": s.running, "pid": s.pid, "restarts": s.restarts,
                       "listen": s.listen})
            }
            Some(None) => json!({"mode": "managed", "running": false}),
        }),
        contact: contact_json,
    });
    let api = Api::start(server, ctx.clone())?;
    jobs.start()?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let settings = health::monitor::Settings::new(args.dead_after, args.metrics_retention);
    let monitor = health::monitor::spawn(health.clone(), settings, stop_rx)?;
    // Before run.json says the gateway is up: from then on a SIGHUP must reload, not kill it.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    runinfo::write(
        &data_dir,
        api_addr,
        ssh_addr,
        &ssh_public,
        &host_fingerprint,
    )?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    log::info!("API on {scheme}://{api_addr}, sshd on {ssh_addr} (nodes dial {ssh_public}, host key {host_fingerprint})");

    for sig in signals.forever() {
        if sig != SIGHUP {
            log::info!("received signal {sig}");
            break;
        }
        match &rules_file {
            None => log::info!("SIGHUP: no alert rules file (built-in rules); nothing to reload"),
            Some(path) => match health::rules::Rules::load(path) {
                Ok(rules) => health.set_rules(rules),
                Err(e) => log::error!("SIGHUP: keeping the alert rules in force: {e:#}"),
            },
        }
    }
    log::info!(
        "shutting down: no new requests; running commands have {} to finish",
        humantime::format_duration(args.shutdown_grace)
    );
    runinfo::remove(&data_dir);
    drop(stop_tx);
    let _ = monitor.join();
    drain(api, &ctx, args.shutdown_grace)?;
    // The handlers' context holds the audit handle: it must go before the log's writer is joined.
    drop(ctx);
    drop(pairing);
    drop(audit_log);
    match supervisor.map(Arc::try_unwrap) {
        None => {}
        Some(Ok(supervisor)) => supervisor.stop(),
        Some(Err(_)) => {
            log::error!("sshd supervisor still shared at shutdown; its sessions may linger")
        }
    }
    Ok(())
}

/// Stops the API within `grace`: from now on every new request is refused (503, "shutting down"),
/// running commands may finish until `grace` is over, then what still runs is cut off by closing every
/// link (each waiting handler gets its command's "link closed" and answers), and the workers are
/// joined.
fn drain(api: Api, ctx: &Ctx, grace: std::time::Duration) -> anyhow::Result<()> {
    ctx.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + grace;
    // Nothing signals a job's end to this thread; a short poll against the deadline does.
    while ctx.jobs.running() > 0 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if ctx.jobs.running() > 0 {
        log::warn!(
            "shutdown grace of {} is over: {} commands go on running on their nodes; the next \
             start of the gateway collects their outcomes",
            humantime::format_duration(grace),
            ctx.jobs.running()
        );
    }
    ctx.jobs.shutdown();
    ctx.bus.shutdown();
    // Unblocks and joins the workers; the last answers (finished or cut-off commands) are written.
    drop(api);
    Ok(())
}

/// `alerts.toml` in the directory of the config file in use (`--config`, `BURROW_CONFIG`, or
/// /etc/burrow/gateway.toml), if it exists.
/// The API's certificate chain and key (`--tls-cert`, `--tls-key`), read once at start.
fn tls_config(args: &ServeArgs) -> anyhow::Result<Option<tiny_http::SslConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    if args.system_sshd {
        // The system sshd's snippet (`install --sshd-snippet`) lets enrollment logins reach the
        // API port; with TLS pairing moves to a port of its own, which that snippet cannot know.
        bail!("--tls-cert does not work with --system-sshd yet: serve the API on 127.0.0.1 and reach it with ssh -L");
    }
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the TLS {what} {}", path.display()))
    };
    let certificate = read(cert, "certificate")?;
    let private_key = read(key, "key")?;
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(key).is_ok_and(|m| m.mode() & 0o077 != 0) {
        log::warn!(
            "the TLS key {} is readable by others than its owner: chmod 600 it",
            key.display()
        );
    }
    Ok(Some(tiny_http::SslConfig {
        certificate,
        private_key,
    }))
}

fn default_rules_file() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os();
    let mut config = None;
    while let Some(a) = args.next() {
        if a == "--config" {
            config = args.next().map(std::path::PathBuf::from);
        } else if let Some(v) = a.to_str().and_then(|a| a.strip_prefix("--config=")) {
            config = Some(v.into());
        }
    }
    let config = config
        .or_else(|| std::env::var_os("BURROW_CONFIG").map(Into::into))
        .unwrap_or_else(|| "/etc/burrow/gateway.toml".into());
    let file = config.parent()?.join("alerts.toml");
    file.is_file().then_some(file)
}

/// A free port on the given address (for `--ssh 127.0.0.1:0`): bind, read, release.
pub fn free_port(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(addr).with_context(|| format!("finding a free port on {addr}"))?;
    Ok(l.local_addr()?)
}

/// The `SHA256:` fingerprint of the system sshd's Ed25519 host key, from its `.pub` file.
fn system_host_fingerprint(path: &Path) -> anyhow::Result<String> {
    let line = std::fs::read_to_string(path)
        .with_context(|| format!("reading the system sshd's host key {}", path.display()))?;
    let key = burrow_core::identity::PublicKey::from_openssh(&line)
        .with_context(|| format!("{} is not an ssh-ed25519 public key", path.display()))?;
    Ok(key.fingerprint())
}
