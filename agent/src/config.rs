//! How the agent's flags come from `/etc/burrow/agent.toml` and `BURROW_*` variables, tested against
//! its real command line (the environment in child processes). The machinery is
//! `burrow_core::settings`, shared with the gateway, whose `config.rs` tests its own command line;
//! `main.rs` calls `burrow_core::settings::parse` and compiles this module for tests only.

mod tests {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command as Process;
    use std::time::Duration;

    use anyhow::Result;
    use burrow_core::settings::settings;
    use clap::{Command, CommandFactory, FromArgMatches};

    use crate::cli::{Cli, Command as Sub};
    use burrow_core::settings::command;

    const NO_DEFAULT: &str = "/nonexistent/burrow/agent.toml";

    /// A config file in a fresh temp dir (removed when the returned guard drops).
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        std::iter::once("agent")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Drops every `env` attribute, so the developer's own `BURROW_*` variables cannot change the
    /// in-process tests (the environment is tested in child processes, see `in_child`).
    fn without_env(command: Command) -> Command {
        let command = command.mut_args(|arg| arg.env(None));
        let subs: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        subs.iter().fold(command, |command, name| {
            command.mut_subcommand(name, without_env)
        })
    }

    fn parse_with(args: &[&str], default_file: &Path) -> Result<Cli> {
        let args = os(args);
        let command = without_env(command::<Cli>(&args, default_file)?);
        let matches = command.try_get_matches_from(args)?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    fn parse(args: &[&str]) -> Result<Cli> {
        parse_with(args, Path::new(NO_DEFAULT))
    }

    fn run_profile(cli: &Cli) -> (Option<String>, &crate::cli::Profile) {
        match &cli.command {
            Sub::Run { join, profile, .. } => (join.clone(), profile),
            other => panic!("expected run, got {other:?}"),
        }
    }

    const FULL: &str = r#"
data_dir = "/srv/burrow"
log = "debug"
join = "burrow1.example"
name = "pi-1"
capability = ["gpio", "camera"]
label = { site = "home", rack = "2" }
"#;

    #[test]
    fn file_values_apply_and_command_line_flags_win() {
        let (_dir, path) = file(FULL);
        let config = path.to_str().unwrap();
        let cli = parse(&["--config", config, "run"]).unwrap();
        assert_eq!(cli.data_dir, Path::new("/srv/burrow"));
        assert_eq!(cli.log, log::LevelFilter::Debug);
        let (join, profile) = run_profile(&cli);
        assert_eq!(join.as_deref(), Some("burrow1.example"));
        assert_eq!(profile.name.as_deref(), Some("pi-1"));
        assert_eq!(profile.capabilities, ["gpio", "camera"]);
        let labels = [("rack", "2"), ("site", "home")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(profile.labels, labels);

        // A flag beats the file; a repeated flag replaces the file's list rather than adding to it.
        let cli = parse(&[
            "run",
            "--config",
            config,
            "--name",
            "pi-2",
            "--capability",
            "usb",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(cli.data_dir, Path::new("/tmp/x"));
        let (_, profile) = run_profile(&cli);
        assert_eq!(profile.name.as_deref(), Some("pi-2"));
        assert_eq!(profile.capabilities, ["usb"]);
        assert_eq!(profile.labels.len(), 2, "labels still come from the file");

        // `join` is `run --join`; the `join` subcommand's positional string is not a setting.
        let cli = parse(&["--config", config, "join", "burrow1.other"]).unwrap();
        match cli.command {
            Sub::Join { join, profile } => {
                assert_eq!(join, "burrow1.other");
                assert_eq!(profile.name.as_deref(), Some("pi-1"));
            }
            other => panic!("expected join, got {other:?}"),
        }
    }

    /// `max_concurrent` (what the heartbeat announces as `max_jobs`) from the file, the flag, or 64.
    #[test]
    fn max_concurrent_comes_from_the_file_or_the_flag_and_is_at_least_one() {
        let limit = |cli: &Cli| match cli.command {
            Sub::Run { max_concurrent, .. } => max_concurrent,
            ref other => panic!("expected run, got {other:?}"),
        };
        let (_dir, path) = file("max_concurrent = 2\n");
        let config = path.to_str().unwrap();
        assert_eq!(limit(&parse(&["--config", config, "run"]).unwrap()), 2);
        let flag = parse(&["--config", config, "run", "--max-concurrent", "5"]).unwrap();
        assert_eq!(limit(&flag), 5);
        assert_eq!(
            limit(&parse(&["--config", "/dev/null", "run"]).unwrap()),
            64
        );
        assert!(parse(&["--config", "/dev/null", "run", "--max-concurrent", "0"]).is_err());
    }

    /// `--heartbeat-interval` and `--dead-after` from the file (a duration string, or a bare number
    /// of seconds as a TOML integer), the flag, or the defaults the service uses; out of range is an
    /// error naming the range.
    #[test]
    fn heartbeat_interval_and_dead_after_come_from_the_file_or_the_flag() {
        let link = |cli: &Cli| match cli.command {
            Sub::Run { link, .. } => (link.heartbeat_interval, link.dead_after),
            ref other => panic!("expected run, got {other:?}"),
        };
        let secs = Duration::from_secs;
        assert_eq!(
            link(&parse(&["--config", "/dev/null", "run"]).unwrap()),
            (
                crate::service::DEFAULT_HEARTBEAT,
                crate::service::DEFAULT_DEAD_AFTER
            )
        );
        let (_dir, path) = file("heartbeat_interval = \"1m\"\ndead_after = 10\n");
        let config = path.to_str().unwrap();
        assert_eq!(
            link(&parse(&["--config", config, "run"]).unwrap()),
            (secs(60), secs(10))
        );
        let flags = ["--heartbeat-interval", "45s", "--dead-after", "1m30s"];
        let cli = parse(&[&["--config", config, "run"][..], &flags[..]].concat()).unwrap();
        assert_eq!(link(&cli), (secs(45), secs(90)));
        for bad in [
            ["--dead-after", "1s"],
            ["--dead-after", "soon"],
            ["--heartbeat-interval", "0"],
            ["--heartbeat-interval", "2h"],
        ] {
            let err = parse(&[&["--config", "/dev/null", "run"][..], &bad[..]].concat())
                .expect_err("out of range");
            assert!(format!("{err:#}").contains(bad[1]), "{bad:?}: {err:#}");
        }
    }

    #[test]
    fn default_file_is_read_only_if_it_exists_and_dashes_equal_underscores() {
        let cli = parse(&["id"]).unwrap();
        assert_eq!(cli.data_dir, Path::new("/var/lib/burrow/agent"));
        assert_eq!(cli.log, log::LevelFilter::Info);
        let (_dir, path) = file("data-dir = \"/srv/a\"\n");
        let cli = parse_with(&["id"], &path).unwrap();
        assert_eq!(cli.data_dir, Path::new("/srv/a"));
        // An empty file is fine, and `--config /dev/null` is how to ignore the default file.
        let cli = parse_with(&["--config", "/dev/null", "id"], &path).unwrap();
        assert_eq!(cli.data_dir, Path::new("/var/lib/burrow/agent"));
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_the_key_and_the_line() {
        let cases: &[(&str, &str)] = &[
            ("name = \"a\"\nnmae = \"pi\"\n", "unknown key `nmae` in {} (line 2); known keys: capability, data_dir, dead_after, heartbeat_interval, join, label, log, max_concurrent, max_streams, name, policy, service"),
            ("name = \"pi\n", "{}: TOML parse error at line 1, column 11"),
            ("log = \"loud\"\n", "`log` in {} (line 1): invalid value 'loud' for '--log <LOG>'"),
            ("capability = true\n", "`capability` in {} (line 1): expected a string, found boolean"),
            ("capability = [\"a\", true]\n", "`capability` in {} (line 1): expected a string, found boolean"),
            ("label = { site = 1.5 }\n", "`label` in {} (line 1): expected a string, found float"),
            ("label = [\"nokey\"]\n", "`label` in {} (line 1): invalid value 'nokey' for '--label <LABEL>': labels are KEY=VALUE"),
            ("name = [\"a\", \"b\"]\n", "`name` in {} (line 1): expected a string, found array"),
            ("label = { desc = \"a,b\" }\n", "`label` in {} (line 1): \"desc=a,b\" contains `,`, which separates values"),
            ("\n\n[name]\nx = 1\n", "`name` in {} (line 3): expected a string, found table"),
            ("data_dir = \"/a\"\ndata-dir = \"/b\"\n", "`data-dir` in {} (line 2) is set twice"),
            ("config = \"/etc/other.toml\"\n", "unknown key `config` in {} (line 1)"),
        ];
        for (text, expected) in cases {
            let (_dir, path) = file(text);
            let err = parse(&["--config", path.to_str().unwrap(), "run"]).unwrap_err();
            let expected = expected.replace("{}", &path.display().to_string());
            let got = format!("{err:#}");
            assert!(
                got.starts_with(&expected),
                "for {text:?}\n got: {got}\nwant: {expected}"
            );
        }
        let err = parse(&["--config", "/nonexistent/agent.toml", "id"]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("reading config file /nonexistent/agent.toml"),
            "{err:#}"
        );
    }

    #[test]
    fn help_and_version_do_not_read_the_file() {
        let (_dir, path) = file("nmae = 1\n");
        for flag in ["--help", "--version"] {
            let err = parse(&["--config", path.to_str().unwrap(), flag]).unwrap_err();
            let err = err
                .downcast::<clap::Error>()
                .expect("a clap error, not a config one");
            assert!(!err.use_stderr(), "{flag}: {err}");
        }
    }

    #[test]
    fn every_setting_is_its_long_flag_in_env_and_file_and_is_documented() {
        let docs = include_str!("../../docs/deploy.md");
        let command = Cli::command();
        for (key, arg) in settings(&command) {
            let long = arg.get_long().unwrap();
            assert_eq!(key, long.replace('-', "_"), "key of --{long}");
            let env = format!("BURROW_{}", key.to_ascii_uppercase());
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/deploy.md lacks `{key}`"
            );
            assert!(docs.contains(&env), "docs/deploy.md lacks {env}");
        }
        assert_eq!(
            settings(&command).into_keys().collect::<Vec<_>>(),
            [
                "capability",
                "data_dir",
                "dead_after",
                "heartbeat_interval",
                "join",
                "label",
                "log",
                "max_concurrent",
                "max_streams",
                "name",
                "policy",
                "service"
            ]
        );
    }

    /// Runs `args` through `settings::parse` in a fresh copy of this test binary with exactly `env`
    /// (plus PATH), and returns its `Debug` print of the parsed `Cli`: how the environment is tested
    /// without changing this process's environment under tests running in parallel.
    fn in_child(args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BURROW_TEST_CHILD_ARGS", args.join("\u{1f}"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| Some(l.split_once("PARSED ")?.1))
            .unwrap_or_else(|| panic!("child printed no result: {stdout}"))
            .to_string()
    }

    /// The child half of `in_child`; does nothing in a normal test run.
    #[test]
    fn child() {
        let Ok(args) = std::env::var("BURROW_TEST_CHILD_ARGS") else {
            return;
        };
        let args = os(&args.split('\u{1f}').collect::<Vec<_>>());
        let result = command::<Cli>(&args, Path::new(NO_DEFAULT))
            .map_err(anyhow::Error::from)
            .and_then(|c| Ok(c.try_get_matches_from(args)?))
            .and_then(|m| Ok(Cli::from_arg_matches(&m)?));
        match result {
            Ok(cli) => println!("PARSED {cli:?}"),
            Err(e) => println!("PARSED error: {e:#}"),
        }
    }

    #[test]
    fn environment_beats_the_file_and_flags_beat_the_environment() {
        let (_dir, path) = file(FULL);
        let config = path.to_str().unwrap();
        let env = [
            ("BURROW_CONFIG", config),
            ("BURROW_NAME", "from-env"),
            ("BURROW_CAPABILITY", "a,b"),
            ("BURROW_LABEL", "site=office,floor=1"),
            ("BURROW_LOG", "warn"),
        ];
        let out = in_child(&["run"], &env);
        assert!(out.contains("name: Some(\"from-env\")"), "{out}");
        assert!(out.contains("capabilities: [\"a\", \"b\"]"), "{out}");
        assert!(
            out.contains("labels: [(\"site\", \"office\"), (\"floor\", \"1\")]"),
            "{out}"
        );
        assert!(out.contains("log: Warn"), "{out}");
        // Not in the environment: from the file found through BURROW_CONFIG.
        assert!(out.contains("data_dir: \"/srv/burrow\""), "{out}");
        assert!(out.contains("join: Some(\"burrow1.example\")"), "{out}");

        let out = in_child(&["run", "--name", "from-flag", "--log", "error"], &env);
        assert!(
            out.contains("name: Some(\"from-flag\")") && out.contains("log: Error"),
            "{out}"
        );

        // A bad value in the environment is clap's usual error about the variable.
        let out = in_child(&["run"], &[("BURROW_LOG", "loud")]);
        assert!(out.starts_with("error:") && out.contains("loud"), "{out}");
    }
}
