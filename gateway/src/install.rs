//! `gateway install`: the systemd unit `burrow-gateway.service`, `/etc/burrow/gateway.toml` and (as
//! root) the enrollment account `burrow-enroll`, or with `--sshd-snippet` the sshd_config snippet for
//! nodes logging in through the system's own sshd.
//!
//! Nothing is copied: the unit runs the binary where it is (`--bin`, default this one). The config
//! file gets the effective settings of this invocation (flags, `BURROW_*` variables, the config file
//! already read). The unit is always rewritten; the config file only with `--force`. The tests check
//! the unit with `systemd-analyze verify` and the snippet with `sshd -t`/`sshd -T`. The agent's
//! `install.rs` is the sibling; docs/deploy.md explains every choice.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burrow_core::install::{self, config_file, toml_string, unit_path, Paths, Plan, Setting};

use crate::cli::{InstallArgs, Print, ServeArgs};

/// The unit's file name, and the name `systemctl` knows the service by.
const UNIT: &str = "burrow-gateway.service";
const SERVICE: install::Service = install::Service {
    binary: "gateway",
    unit: UNIT,
    config: "gateway.toml",
    next_steps: "Then create a join string for a node: gateway join create\n\
                 Follow its log: journalctl -u burrow-gateway -f",
};

pub fn run(data_dir: &Path, log: log::LevelFilter, args: &InstallArgs) -> Result<()> {
    if args.sshd_snippet {
        let user = match &args.user {
            Some(user) => user.clone(),
            None => crate::sshd::current_user().context("pass --user NAME")?,
        };
        print!(
            "{}",
            system_sshd_snippet(
                &std::path::absolute(data_dir)?,
                &user,
                args.serve.api.port(),
                args.serve.dead_after,
            )?
        );
        return Ok(());
    }
    let print = args.print.map(|what| match what {
        Print::All => install::Print::All,
        Print::Unit => install::Print::Unit,
        Print::Config => install::Print::Config,
    });
    let plan = plan(data_dir, log, args)?;
    if print.is_none() && rustix::process::getuid().is_root() {
        // The service cannot: ProtectSystem=strict leaves /etc read-only to it.
        crate::sshd::required_enroll_user()?;
    }
    Ok(install::run(&SERVICE, &plan, print, args.force)?)
}

fn plan(data_dir: &Path, log: log::LevelFilter, args: &InstallArgs) -> Result<Plan> {
    let (bin, printing) = (args.bin.as_deref(), args.print.is_some());
    let paths = Paths::resolve(
        &SERVICE,
        bin,
        data_dir,
        &args.config_dir,
        &args.unit_dir,
        printing,
    )?;
    let unit = unit(&paths.bin, &paths.config_path, &paths.data_dir)?;
    let config = config(&paths.data_dir, log, &args.serve);
    Ok(paths.into_plan(unit, config))
}

/// The hardened unit. The comments in it are for whoever reads it on the VM.
fn unit(bin: &Path, config: &Path, data_dir: &Path) -> Result<String> {
    let (bin, config, data) = (unit_path(bin)?, unit_path(config)?, unit_path(data_dir)?);
    let version = env!("CARGO_PKG_VERSION");
    let mut text = format!(
        "\
# Written by `gateway install` (burrow {version}), which rewrites it: change settings in
# {config}, and the service with a drop-in (`systemctl edit burrow-gateway`). See docs/deploy.md.
[Unit]
Description=burrow gateway: managed sshd, node registry, pairing and REST API
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin} --config {config} serve
# SIGHUP reloads the alert rules without dropping any node's link.
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5
# Stopping kills the whole cgroup: the managed sshd and every node session with it.
KillMode=control-group
# Each node costs the gateway a connection (and sshd a process); 1024 descriptors would cap the fleet.
LimitNOFILE=65536

# Sandbox. Runs as root: the managed sshd must start as root to switch to the login user and chroot
# into /run/sshd (privilege separation), and to bind a port below 1024 if `ssh` asks for one. None of
# that gains privileges through exec, so NoNewPrivileges=yes holds.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
"
    );
    text.push_str(&install::state_directory(data_dir)?);
    write!(
        text,
        "\
ReadWritePaths={data}
# sshd's privilege separation directory: /run is read-only under ProtectSystem=strict, so systemd
# creates it; Preserve keeps it when the gateway stops, as the system's own ssh.service may use it.
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
UMask=0077
# No MemoryMax: sshd spends a few MB per node session, so a fixed cap would limit the fleet size.

[Install]
WantedBy=multi-user.target
"
    )?;
    Ok(text)
}

/// The config file: every setting of `serve` with its help, those this run sets to something else
/// than the default written out, the rest commented out with their default.
fn config(data_dir: &Path, log: log::LevelFilter, s: &ServeArgs) -> String {
    let set = serve_settings(data_dir, log, s);
    let header = "\
# burrow gateway settings, written by `gateway install`. Each key is also a flag (`data_dir` is
# --data-dir) and an environment variable (BURROW_DATA_DIR); a flag beats the environment, which
# beats this file. Lines starting with `#` show the default. Reference: docs/deploy.md.
";
    let cli = <crate::cli::Cli as clap::CommandFactory>::command();
    let serve = cli
        .find_subcommand("serve")
        .expect("the gateway has a serve subcommand");
    config_file(header, &[&cli, serve], &set)
}

/// The value of every setting `serve` reads, as TOML (see `config`; a test checks none is missing).
fn serve_settings(data_dir: &Path, log: log::LevelFilter, s: &ServeArgs) -> Vec<Setting<'static>> {
    let path = |p: &Path| Some(toml_string(&p.to_string_lossy()));
    let duration = |d| Some(toml_string(&humantime::format_duration(d).to_string()));
    vec![
        ("data_dir", path(data_dir), ""),
        (
            "log",
            Some(toml_string(&log.to_string().to_ascii_lowercase())),
            "",
        ),
        ("api", Some(toml_string(&s.api.to_string())), ""),
        ("ssh", Some(toml_string(&s.ssh.to_string())), ""),
        (
            "ssh_public",
            s.ssh_public.as_deref().map(toml_string),
            "\"vm.example.com:2222\"",
        ),
        ("sshd", path(&s.sshd), ""),
        ("system_sshd", Some(s.system_sshd.to_string()), ""),
        ("host_key", path(&s.host_key), ""),
        ("insecure", Some(s.insecure.to_string()), ""),
        (
            "tls_cert",
            s.tls_cert.as_deref().and_then(path),
            "\"/etc/burrow/tls/fullchain.pem\"",
        ),
        (
            "tls_key",
            s.tls_key.as_deref().and_then(path),
            "\"/etc/burrow/tls/key.pem\"",
        ),
        ("max_answer_bytes", Some(s.max_answer_bytes.to_string()), ""),
        ("max_nodes", Some(s.max_nodes.to_string()), ""),
        (
            "metrics_listen",
            s.metrics_listen.map(|a| toml_string(&a.to_string())),
            "\"10.8.0.1:9101\"",
        ),
        ("shutdown_grace", duration(s.shutdown_grace), ""),
        ("dead_after", duration(s.dead_after), ""),
        (
            "alert_rules",
            s.alert_rules.as_deref().and_then(path),
            "\"/etc/burrow/alerts.toml\"",
        ),
        ("metrics_retention", duration(s.metrics_retention), ""),
        ("audit_max_bytes", Some(s.audit_max_bytes.to_string()), ""),
        ("audit_keep", Some(s.audit_keep.to_string()), ""),
        (
            "audit_max_age",
            s.audit_max_age.and_then(duration),
            "\"90days\"",
        ),
        ("audit_denied_every", duration(s.audit_denied_every), ""),
    ]
}

/// The `Match User` blocks that make a system sshd treat node and enrollment logins the way the
/// managed sshd does.
fn system_sshd_snippet(
    data_dir: &Path,
    user: &str,
    api_port: u16,
    dead_after: std::time::Duration,
) -> Result<String> {
    if !crate::sshd::plain_user(user) {
        bail!("user {user:?} cannot be written into sshd_config");
    }
    if user == "root" {
        // The block replaces AuthorizedKeysFile and forces /bin/false: it would lock root out.
        bail!(
            "nodes must not log in as root through the system sshd (the Match block would lock root \
             out): create a user for them (useradd --system --shell /usr/sbin/nologin burrow), run \
             the gateway as that user and pass --user burrow"
        );
    }
    let enroll = crate::sshd::ENROLL_USER;
    let enroll_keys = data_dir.join("sshd").join("enroll_keys");
    let (alive_interval, alive_count) = crate::sshd::client_alive(dead_after);
    let enroll_block = crate::sshd::enroll_block(enroll, user, &enroll_keys, api_port, dead_after)
        .with_context(|| format!("{} in sshd_config", enroll_keys.display()))?;
    let useradd = crate::sshd::useradd_command(enroll);
    let keys = data_dir.join("sshd").join("authorized_keys");
    let keys = match keys.to_str() {
        Some(k) if !k.contains(['"', '\n', '\r', '%']) => k.to_string(),
        _ => bail!(
            "{} cannot be written into sshd_config; choose a plainer data dir",
            keys.display()
        ),
    };
    Ok(format!(
        "\
# burrow: nodes log in as {user} with the keys the gateway writes, and may only forward ports (each
# key line adds restrict, permitlisten/permitopen and command=\"/bin/false\" on top of this block).
# Join tokens and pending nodes log in as {enroll}, who may reach the API port on 127.0.0.1 and
# nothing else (no listening at all); the gateway (user {user}) hands sshd their keys. Create it
# first (as root; with UsePAM no sshd refuses a locked '!' password, '*' is not a lock):
#   {useradd}
# Written by `gateway install --sshd-snippet`. Save it as /etc/ssh/sshd_config.d/burrow.conf (Debian
# includes that directory; a Match block in an included file ends with the file), or append it to
# the END of /etc/ssh/sshd_config. Then: sshd -t && systemctl reload ssh
Match User {user}
    AuthorizedKeysFile \"{keys}\"
    AuthenticationMethods publickey
    PubkeyAuthentication yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    AllowTcpForwarding yes
    GatewayPorts no
    PermitTTY no
    X11Forwarding no
    AllowAgentForwarding no
    AllowStreamLocalForwarding no
    PermitTunnel no
    ForceCommand /bin/false
    # Reap sessions of nodes that vanished within the gateway's --dead-after, so their forwarded
    # ports free up.
    ClientAliveInterval {alive_interval}
    ClientAliveCountMax {alive_count}
{enroll_block}"
    ))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Duration;

    use burrow_core::identity::Identity;

    use clap::FromArgMatches;

    use super::*;
    use crate::cli::{Cli, Command as Sub};

    use burrow_core::install::testing::{install_test_base, skipped, systemd_problems, TEST_BIN};

    /// A temporary directory for tests that install for real (see [`install_test_base`]).
    fn install_root() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(".burrow-install-test")
            .tempdir_in(install_test_base())
            .unwrap()
    }

    /// `gateway <args>` parsed with the config machinery but no config file and no environment.
    fn install_args(args: &[&str]) -> Cli {
        burrow_core::install::testing::parse_cli("gateway", args)
    }

    fn install_of(cli: &Cli) -> &InstallArgs {
        match &cli.command {
            Sub::Install(install) => install,
            other => panic!("expected install, got {other:?}"),
        }
    }

    #[test]
    fn install_writes_a_unit_that_systemd_analyze_verifies_and_a_0600_config() {
        let root = install_root();
        let d = |name: &str| root.path().join(name).to_str().unwrap().to_string();
        let (units, etc, data) = (d("units"), d("etc"), d("data"));
        let cli = install_args(&[
            "install",
            "--unit-dir",
            &units,
            "--config-dir",
            &etc,
            "--data-dir",
            &data,
            "--ssh",
            "0.0.0.0:22",
            "--ssh-public",
            "vm.example.com:22",
        ]);
        run(&cli.data_dir, cli.log, install_of(&cli)).unwrap();

        let unit_path = root.path().join("units").join(UNIT);
        let unit = fs::read_to_string(&unit_path).unwrap();
        let exe = Path::new(TEST_BIN);
        for line in [
            format!(
                "ExecStart={} --config {etc}/gateway.toml serve",
                exe.display()
            ),
            "ExecReload=/bin/kill -HUP $MAINPID".into(),
            format!("ReadWritePaths={data}"),
            "RuntimeDirectory=sshd".into(),
            "RuntimeDirectoryPreserve=yes".into(),
            "NoNewPrivileges=yes".into(),
            "ProtectSystem=strict".into(),
            "Restart=always".into(),
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "missing {line:?} in\n{unit}"
            );
        }
        let config_path = root.path().join("etc/gateway.toml");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config_path), 0o600);
        assert_eq!(mode(Path::new(&data)), 0o700);
        if let Some(problems) = systemd_problems(&unit_path) {
            assert_eq!(problems, "", "systemd-analyze verify on\n{unit}");
        }

        // The config file reads back through the real parser as what was installed.
        let args: Vec<OsString> = [
            "gateway",
            "--config",
            config_path.to_str().unwrap(),
            "serve",
        ]
        .map(OsString::from)
        .into();
        let command =
            burrow_core::settings::command::<Cli>(&args, Path::new("/nonexistent")).unwrap();
        let back = Cli::from_arg_matches(&command.get_matches_from(args)).unwrap();
        assert_eq!(back.data_dir, Path::new(&data));
        match back.command {
            Sub::Serve(s) => {
                assert_eq!(s.ssh.to_string(), "0.0.0.0:22");
                assert_eq!(s.api.to_string(), "127.0.0.1:18789");
                assert_eq!(s.ssh_public.as_deref(), Some("vm.example.com:22"));
                assert_eq!(s.sshd, Path::new("/usr/sbin/sshd"));
                assert!(!s.insecure);
            }
            other => panic!("{other:?}"),
        }
        let err = run(&cli.data_dir, cli.log, install_of(&cli)).unwrap_err();
        assert!(format!("{err:#}").contains("pass --force"), "{err:#}");
    }

    #[test]
    fn default_paths_use_state_directory() {
        let cli = install_args(&["install", "--print"]);
        let plan = plan(&cli.data_dir, cli.log, install_of(&cli)).unwrap();
        assert_eq!(
            plan.unit_path,
            Path::new("/etc/systemd/system/burrow-gateway.service")
        );
        assert_eq!(plan.config_path, Path::new("/etc/burrow/gateway.toml"));
        assert!(plan
            .unit
            .contains("--config /etc/burrow/gateway.toml serve\n"));
        assert!(plan.unit.contains(
            "\nStateDirectory=burrow/gateway\nStateDirectoryMode=0700\nReadWritePaths=/var/lib/burrow/gateway\n"
        ));
        assert!(plan.config.contains("\n# ssh_public = "));
        assert!(unit_path(Path::new("/opt/my gateway")).is_err());
    }

    /// Issue 12, papercut 4: docs/deploy.md promised the unset settings "commented out", but the
    /// defaults were written as set and `system_sshd`/`host_key` were missing. Every setting `serve`
    /// reads now has one line, commented out with its default unless this run changes it.
    #[test]
    fn install_print_lists_every_setting_commented_out_unless_set() {
        let cli = install_args(&["install", "--print", "--ssh-public", "vm.example.com:22"]);
        let text = plan(&cli.data_dir, cli.log, install_of(&cli))
            .unwrap()
            .config;
        let command = <Cli as clap::CommandFactory>::command();
        let serve = command.find_subcommand("serve").unwrap();
        let keys: Vec<String> = command
            .get_arguments()
            .chain(serve.get_arguments())
            .filter_map(burrow_core::settings::setting_key)
            .collect();
        let set = serve_settings(
            Path::new("/d"),
            log::LevelFilter::Info,
            &install_of(&cli).serve,
        );
        for key in &keys {
            // A setting missing here would be silently dropped from an installed config.
            assert!(
                set.iter().any(|(k, _, _)| k == key),
                "serve_settings has no value for `{key}`"
            );
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let l = l.strip_prefix("# ").unwrap_or(l);
                    l.strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.starts_with(" = "))
                })
                .collect();
            let expected = if key == "ssh_public" {
                "ssh_public = \"vm.example.com:22\"".to_string()
            } else {
                format!("# {key} = ")
            };
            assert!(
                lines.len() == 1 && lines[0].starts_with(&expected),
                "`{key}`: expected one line starting {expected:?}, found {lines:?} in\n{text}"
            );
        }
        assert!(text.contains("\n# system_sshd = false\n"), "{text}");
        assert!(text.contains("\n# shutdown_grace = \"10s\"\n"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 100), "{text}");
    }
    /// `sshd -T` (effective settings) for a login of `user` under `config`.
    fn effective(config: &Path, user: &str) -> String {
        crate::testing::sshd_t(Path::new("/usr/sbin/sshd"), config, user)
    }

    #[test]
    fn system_sshd_snippet_passes_sshd_t_and_applies_to_node_and_enrollment_users_only() {
        if !Path::new("/usr/sbin/sshd").is_file() {
            skipped("/usr/sbin/sshd not found (apt-get install -y openssh-server)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_key");
        Identity::load_or_generate(&host_key, "test").unwrap();
        let data = Path::new("/var/lib/burrow/gateway");
        let snippet = system_sshd_snippet(data, "burrow", 18789, Duration::from_secs(20)).unwrap();
        // As Debian ships it: the drop-in directory included first, global settings after it.
        let drop_in = dir.path().join("sshd_config.d");
        fs::create_dir(&drop_in).unwrap();
        fs::write(drop_in.join("burrow.conf"), &snippet).unwrap();
        let config = dir.path().join("sshd_config");
        let main = format!(
            "Include {}/*.conf\nHostKey {}\nUsePAM no\nPidFile none\nX11Forwarding yes\n",
            drop_in.display(),
            host_key.display()
        );
        fs::write(&config, main).unwrap();
        let out = Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "sshd -t: {}\n{snippet}",
            String::from_utf8_lossy(&out.stderr)
        );
        let node = effective(&config, "burrow");
        for line in [
            "authorizedkeysfile /var/lib/burrow/gateway/sshd/authorized_keys",
            "authenticationmethods publickey",
            "passwordauthentication no",
            "allowtcpforwarding yes",
            "permittty no",
            "x11forwarding no",
            "allowagentforwarding no",
            "permittunnel no",
            "forcecommand /bin/false",
            // --dead-after 20s: 4 probes 5 s apart.
            "clientaliveinterval 5",
            "clientalivecountmax 4",
        ] {
            assert!(
                node.lines().any(|l| l == line),
                "missing {line:?} for the node user"
            );
        }
        // Everyone else keeps the system's settings: the block ends with its file.
        let other = effective(&config, "alice");
        for line in ["permittty yes", "x11forwarding yes", "forcecommand none"] {
            assert!(
                other.lines().any(|l| l == line),
                "missing {line:?} for another user"
            );
        }
        // Enrollment logins reach the API port and cannot listen anywhere; their keys come from the
        // gateway's file, read as the gateway's user, never from the node user's file.
        let enroll = effective(&config, crate::sshd::ENROLL_USER);
        for line in [
            "authorizedkeysfile none",
            "authorizedkeyscommand /usr/bin/cat \"/var/lib/burrow/gateway/sshd/enroll_keys\"",
            "authorizedkeyscommanduser burrow",
            "allowtcpforwarding local",
            "permitlisten none",
            "permitopen 127.0.0.1:18789",
            "permittty no",
            "forcecommand /bin/false",
        ] {
            let line = line.replace("/usr/bin/cat", cat());
            assert!(
                enroll.lines().any(|l| l == line),
                "missing {line:?} for the enrollment user in\n{enroll}"
            );
        }
        assert!(snippet.contains(&crate::sshd::useradd_command(crate::sshd::ENROLL_USER)));
        assert!(system_sshd_snippet(data, "a b", 1, Duration::from_secs(20)).is_err());
        let err = system_sshd_snippet(data, "root", 1, Duration::from_secs(20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lock root out"), "{err}");
        assert!(
            system_sshd_snippet(Path::new("/srv/100%"), "burrow", 1, Duration::from_secs(20))
                .is_err()
        );
    }

    fn cat() -> &'static str {
        ["/usr/bin/cat", "/bin/cat"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap()
    }
}
