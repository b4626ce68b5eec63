//! `agent install`: the hardened systemd unit `burrow-agent.service` and `/etc/burrow/agent.toml`.
//!
//! Nothing is copied: the unit runs the binary where it is (`--bin`, default this one). The config
//! file gets the effective settings of this invocation (flags, `BURROW_*` variables, the config file
//! already read), so `agent install --force` after an upgrade keeps what was configured. The unit is
//! always rewritten; the config file, which may hold a join string, only with `--force`. Both are
//! checked by `systemd-analyze verify` in the tests below. docs/deploy.md explains every choice.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use burrow_core::install::{self, config_file, toml_key, toml_string, unit_path, Paths, Plan};

use crate::cli::{InstallArgs, Print, Profile};

/// The unit's file name, and the name `systemctl` knows the service by.
const UNIT: &str = "burrow-agent.service";
const SERVICE: install::Service = install::Service {
    binary: "agent",
    unit: UNIT,
    config: "agent.toml",
    next_steps: "Follow its log (joining, reconnects): journalctl -u burrow-agent -f",
};

pub fn run(data_dir: &Path, log: log::LevelFilter, args: &InstallArgs) -> Result<()> {
    let print = args.print.map(|what| match what {
        Print::All => install::Print::All,
        Print::Unit => install::Print::Unit,
        Print::Config => install::Print::Config,
    });
    let plan = plan(data_dir, log, args)?;
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
    let config = config(&paths.data_dir, log, args.join.as_deref(), &args.profile);
    Ok(paths.into_plan(unit, config))
}

/// The hardened unit. The comments in it are for whoever reads it on the node.
fn unit(bin: &Path, config: &Path, data_dir: &Path) -> Result<String> {
    let (bin, config, data) = (unit_path(bin)?, unit_path(config)?, unit_path(data_dir)?);
    let version = env!("CARGO_PKG_VERSION");
    let mut text = format!(
        "\
# Written by `agent install` (burrow {version}), which rewrites it: change settings in
# {config}, and the service with a drop-in (`systemctl edit burrow-agent`). See docs/deploy.md.
[Unit]
Description=burrow agent: serves its gateway's commands through an outbound SSH tunnel
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin} --config {config} run
# SIGHUP reloads the node owner's exec policy (docs/policy.md); a bad file keeps the old one.
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5
# 3: the gateway revoked this node; restarting cannot help (join again instead).
RestartPreventExitStatus=3
# A command the OOM killer ends (see MemoryMax) failed; the agent itself carries on.
OOMPolicy=continue

# Sandbox. The commands the agent runs for operators live in it too: under ProtectSystem=strict
# they cannot write /usr, /etc or /boot (so `apt-get upgrade` fails), under ProtectHome=read-only
# not /home or /root, and `ip` or `ss` find no netlink sockets. To administer this machine through
# burrow, relax it with a drop-in (`systemctl edit burrow-agent`); docs/deploy.md has one.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
"
    );
    text.push_str(&install::state_directory(data_dir)?);
    write!(
        text,
        "\
ReadWritePaths={data}
ProtectKernelTunables=yes
ProtectControlGroups=yes
# Each job in its own cgroup, so cancel and timeouts also kill what left the process group
# (`setsid`): systemd hands the service's own cgroup subtree to the agent and only that subtree is
# writable. Where it is not (cgroup v1, an older systemd), the agent logs why and uses process groups.
Delegate=yes
ReadWritePaths=-/sys/fs/cgroup/system.slice/burrow-agent.service
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
LockPersonality=yes
# The agent stays under ~6 MB; the rest is room for the commands it runs, which share this cgroup.
# A runaway command is OOM-killed here instead of starving the whole machine (a Pi Zero has 512 MB).
# Raise it in a drop-in for heavy jobs (MemoryMax=512M, or infinity).
MemoryMax=64M

[Install]
WantedBy=multi-user.target
"
    )?;
    Ok(text)
}

/// The config file: every setting of `agent run` with its help; those `install` was given written
/// out, the rest commented out with their default or an example.
fn config(data_dir: &Path, log: log::LevelFilter, join: Option<&str>, p: &Profile) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let capabilities = p.capabilities.iter().map(|c| toml_string(c)).collect();
    let labels = p.labels.iter();
    let labels = labels.map(|(k, v)| format!("{} = {}", toml_key(k), toml_string(v)));
    let log = toml_string(&log.to_string().to_ascii_lowercase());
    let entries = [
        (
            "data_dir",
            Some(toml_string(&data_dir.to_string_lossy())),
            "",
        ),
        ("log", Some(log), ""),
        ("join", join.map(toml_string), "\"burrow1.…\""),
        ("name", p.name.as_deref().map(toml_string), "\"pi-1\""),
        (
            "capability",
            (!p.capabilities.is_empty()).then(|| format!("[{}]", list(capabilities))),
            "[\"gpio\", \"camera\"]",
        ),
        (
            "label",
            (!p.labels.is_empty()).then(|| format!("{{ {} }}", list(labels.collect()))),
            "{ site = \"home\", rack = \"2\" }",
        ),
    ];
    let header = "\
# burrow agent settings, written by `agent install`. Each key is also a flag (`data_dir` is
# --data-dir) and an environment variable (BURROW_DATA_DIR); a flag beats the environment, which
# beats this file. Lines starting with `#` show the default. Reference: docs/deploy.md. Keep this
# file 0600: it may hold a join string.
";
    let cli = <crate::cli::Cli as clap::CommandFactory>::command();
    let run = cli
        .find_subcommand("run")
        .expect("the agent has a run subcommand");
    config_file(header, &[&cli, run], &entries)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use clap::FromArgMatches;

    use super::*;
    use crate::cli::{Cli, Command as Sub};

    use burrow_core::install::testing::{install_test_base, systemd_problems, TEST_BIN};

    /// A temporary directory for tests that install for real (see [`install_test_base`]).
    fn install_root() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(".burrow-install-test")
            .tempdir_in(install_test_base())
            .unwrap()
    }

    /// `agent <args>` parsed with the config machinery but no config file and no environment.
    fn install_args(args: &[&str]) -> Cli {
        burrow_core::install::testing::parse_cli("agent", args)
    }

    fn install_of(cli: &Cli) -> &InstallArgs {
        match &cli.command {
            Sub::Install(install) => install,
            other => panic!("expected install, got {other:?}"),
        }
    }

    /// `agent install` with its three directories under `root`, then `extra`.
    fn install_in(root: &Path, extra: &[&str]) -> Cli {
        let d = |name: &str| root.join(name).to_str().unwrap().to_string();
        let (units, etc, data) = (d("units"), d("etc"), d("data"));
        let mut args = vec!["install", "--unit-dir", &units, "--config-dir", &etc];
        args.extend(["--data-dir", &data]);
        args.extend(extra);
        install_args(&args)
    }

    #[test]
    fn install_writes_a_unit_that_systemd_analyze_verifies_and_a_0600_config() {
        let root = install_root();
        let cli = install_in(
            root.path(),
            &[
                "--join",
                "burrow1.abc",
                "--name",
                "pi-1",
                "--label",
                "site=home",
            ],
        );
        run(&cli.data_dir, cli.log, install_of(&cli)).unwrap();

        let unit_path = root.path().join("units").join(UNIT);
        let unit = fs::read_to_string(&unit_path).unwrap();
        let exe = Path::new(TEST_BIN);
        let config_path = root.path().join("etc/agent.toml");
        let data = root.path().join("data");
        for line in [
            format!(
                "ExecStart={} --config {} run",
                exe.display(),
                config_path.display()
            ),
            format!("ReadWritePaths={}", data.display()),
            "ExecReload=/bin/kill -HUP $MAINPID".into(),
            "Type=simple".into(),
            "Restart=always".into(),
            "RestartPreventExitStatus=3".into(),
            "NoNewPrivileges=yes".into(),
            "ProtectSystem=strict".into(),
            "MemoryMax=64M".into(),
            "WantedBy=multi-user.target".into(),
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "missing {line:?} in\n{unit}"
            );
        }
        assert!(
            !unit.contains("StateDirectory"),
            "data dir is not under /var/lib"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config_path), 0o600);
        assert_eq!(mode(&unit_path), 0o644);
        assert_eq!(mode(&data), 0o700);

        if let Some(problems) = systemd_problems(&unit_path) {
            assert_eq!(problems, "", "systemd-analyze verify on\n{unit}");
            // The check itself works: a typo is caught although systemd-analyze exits 0 on it.
            let typo = root.path().join("units/typo/burrow-agent.service");
            install::write(
                &typo,
                &unit.replace("Restart=always", "Restart=alwayz"),
                0o644,
            )
            .unwrap();
            let problems = systemd_problems(&typo).unwrap();
            assert!(problems.contains("alwayz"), "{problems}");
        }

        // The config file reads back, through the real parser, as what was installed.
        let config = fs::read_to_string(&config_path).unwrap();
        let args: Vec<OsString> = ["agent", "--config", config_path.to_str().unwrap(), "run"]
            .map(OsString::from)
            .into();
        let command =
            burrow_core::settings::command::<Cli>(&args, Path::new("/nonexistent")).unwrap();
        let back = Cli::from_arg_matches(&command.get_matches_from(args)).unwrap();
        assert_eq!(back.data_dir, data);
        match back.command {
            Sub::Run { join, profile, .. } => {
                assert_eq!(join.as_deref(), Some("burrow1.abc"), "{config}");
                assert_eq!(profile.name.as_deref(), Some("pi-1"));
                assert_eq!(profile.labels, [("site".into(), "home".into())]);
                assert!(profile.capabilities.is_empty());
            }
            other => panic!("{other:?}"),
        }

        // Never replaced without --force; with it, the new values win.
        let err = run(&cli.data_dir, cli.log, install_of(&cli)).unwrap_err();
        assert!(format!("{err:#}").contains("pass --force"), "{err:#}");
        let cli = install_in(root.path(), &["--force", "--name", "pi-2"]);
        run(&cli.data_dir, cli.log, install_of(&cli)).unwrap();
        assert!(fs::read_to_string(&config_path)
            .unwrap()
            .contains("\nname = \"pi-2\"\n"));
    }

    #[test]
    fn default_paths_use_state_directory_and_print_writes_nothing() {
        let cli = install_args(&["install", "--print"]);
        let plan = plan(&cli.data_dir, cli.log, install_of(&cli)).unwrap();
        assert_eq!(
            plan.unit_path,
            Path::new("/etc/systemd/system/burrow-agent.service")
        );
        assert_eq!(plan.config_path, Path::new("/etc/burrow/agent.toml"));
        for line in [
            "ExecStart=",
            "--config /etc/burrow/agent.toml run",
            "\nStateDirectory=burrow/agent\nStateDirectoryMode=0700\nReadWritePaths=/var/lib/burrow/agent\n",
        ] {
            assert!(plan.unit.contains(line), "missing {line:?} in\n{}", plan.unit);
        }
        // Defaults are shown commented out, with their help above them (issue 12, papercut 4).
        for line in [
            "\n# data_dir = \"/var/lib/burrow/agent\"\n",
            "\n# log = \"info\"\n",
            "\n# The join string from `gateway join create`; ignored once this node is paired\n# join = ",
            "\n# max_concurrent = 64\n",
        ] {
            assert!(plan.config.contains(line), "missing {line:?} in\n{}", plan.config);
        }
        // With --print nothing is written (the real /etc is not touched, whoever runs the tests).
        run(&cli.data_dir, cli.log, install_of(&cli)).unwrap();
    }

    #[test]
    fn unusable_paths_are_refused() {
        assert!(unit_path(Path::new("/opt/my agent")).is_err());
        assert!(unit_path(Path::new("/opt/100%")).is_err());
        assert!(unit_path(Path::new("/opt/$HOME")).is_err());
        let err = install::check_binary(Path::new("/nonexistent/agent"), false).unwrap_err();
        assert!(err.to_string().contains("pass --bin"), "{err}");
    }

    /// Regression (papercut): `--print` refused a binary under /tmp although it writes nothing,
    /// while a data dir or config dir under /tmp passed without a word. Every path the unit depends
    /// on is now treated alike: a warning when printing, a refusal when installing.
    #[test]
    fn paths_under_tmp_warn_when_printing_and_are_refused_when_installing() {
        let ok = Path::new(TEST_BIN);
        let (data, etc) = (
            Path::new("/var/lib/burrow/agent"),
            Path::new("/etc/burrow/agent.toml"),
        );
        assert!(install::hidden_by_private_tmp(&SERVICE, ok, data, etc).is_empty());
        let hidden = install::hidden_by_private_tmp(
            &SERVICE,
            Path::new("/tmp/agent"),
            Path::new("/var/tmp/data"),
            Path::new("/tmp/etc/agent.toml"),
        );
        assert_eq!(hidden.len(), 3, "{hidden:?}");
        for (h, what) in hidden.iter().zip(["binary", "data dir", "config file"]) {
            assert!(h.contains(what) && h.contains("PrivateTmp"), "{h}");
        }
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let printed = install_in(tmp.path(), &["--print"]);
        run(&printed.data_dir, printed.log, install_of(&printed)).unwrap();
        let installing = install_in(tmp.path(), &[]);
        let err = run(
            &installing.data_dir,
            installing.log,
            install_of(&installing),
        )
        .unwrap_err();
        assert!(err.to_string().contains("PrivateTmp"), "{err}");
        assert!(
            fs::read_dir(tmp.path()).unwrap().next().is_none(),
            "nothing was written"
        );
    }

    #[test]
    fn config_strings_and_keys_are_escaped() {
        let profile = Profile {
            name: Some("pi \"one\"\\\n".into()),
            capabilities: vec!["a,b".into(), "ü".into()],
            labels: vec![
                ("has space".into(), "x".into()),
                ("ok-key_1".into(), "\t".into()),
            ],
        };
        let text = config(Path::new("/d"), log::LevelFilter::Warn, None, &profile);
        let table = toml::de::DeTable::parse(&text).unwrap();
        let table = table.get_ref();
        let get = |k: &str| table.get(k).unwrap().get_ref().clone();
        assert_eq!(get("name").as_str(), Some("pi \"one\"\\\n"));
        assert_eq!(get("log").as_str(), Some("warn"));
        let caps: Vec<_> = get("capability")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.get_ref().as_str().unwrap().to_string())
            .collect();
        assert_eq!(caps, ["a,b", "ü"]);
        let label = get("label");
        let label = label.as_table().unwrap();
        assert_eq!(
            label.get("has space").unwrap().get_ref().as_str(),
            Some("x")
        );
        assert_eq!(
            label.get("ok-key_1").unwrap().get_ref().as_str(),
            Some("\t")
        );
        assert!(table.get("join").is_none());
    }
}
