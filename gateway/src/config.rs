//! How the gateway's flags come from `/etc/burrow/gateway.toml` and `BURROW_*` variables, tested
//! against its real command line. The machinery is `burrow_core::settings`, shared with the agent,
//! whose `config.rs` also tests the environment; `main.rs` calls `burrow_core::settings::parse` and
//! compiles this module for tests only.

mod tests {
    use std::ffi::OsString;
    use std::net::SocketAddr;
    use std::path::Path;

    use anyhow::Result;
    use burrow_core::settings::settings;
    use clap::{CommandFactory, FromArgMatches};

    use crate::cli::{Cli, Command as Sub, ServeArgs};
    use burrow_core::settings::command;

    /// `gateway <args>` with a config file holding `file_text`; also returns the file's path.
    fn parse_showing(args: &[&str], file_text: &str) -> (Result<Cli>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, file_text).unwrap();
        let path = path.to_str().unwrap().to_string();
        let args: Vec<OsString> = ["gateway", "--config", &path]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect();
        let result = command::<Cli>(&args, Path::new("/nonexistent/gateway.toml"));
        let result = result.map_err(anyhow::Error::from).and_then(|c| {
            // No `env`: the developer's own BURROW_* variables must not change these tests (the
            // agent's twin tests the environment, in child processes).
            let c = c.mut_args(|a| a.env(None));
            let c = c.mut_subcommand("serve", |c| c.mut_args(|a| a.env(None)));
            Ok(Cli::from_arg_matches(&c.try_get_matches_from(args)?)?)
        });
        (result, path)
    }

    fn parse(args: &[&str], file_text: &str) -> Result<Cli> {
        parse_showing(args, file_text).0
    }

    fn serve(cli: Cli) -> ServeArgs {
        match cli.command {
            Sub::Serve(args) => args,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    const FULL: &str = r#"
data_dir = "/srv/gw"
log = "warn"
api = "127.0.0.1:9000"
ssh = "0.0.0.0:22"
ssh_public = "vm.example.com:22"
sshd = "/opt/openssh/sbin/sshd"
insecure = true
"#;

    #[test]
    fn every_serve_setting_comes_from_the_file_unless_a_flag_is_given() {
        let cli = parse(&["serve"], FULL).unwrap();
        assert_eq!(cli.data_dir, Path::new("/srv/gw"));
        assert_eq!(cli.log, log::LevelFilter::Warn);
        let s = serve(cli);
        assert_eq!(s.api, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(s.ssh, "0.0.0.0:22".parse::<SocketAddr>().unwrap());
        assert_eq!(s.ssh_public.as_deref(), Some("vm.example.com:22"));
        assert_eq!(s.sshd, Path::new("/opt/openssh/sbin/sshd"));
        assert!(s.insecure);

        let s = serve(parse(&["serve", "--ssh", "127.0.0.1:2222"], FULL).unwrap());
        assert_eq!(s.ssh, "127.0.0.1:2222".parse::<SocketAddr>().unwrap());
        assert_eq!(s.api, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());

        let s = serve(parse(&["serve"], "insecure = false\n").unwrap());
        assert!(!s.insecure);
        assert_eq!(s.ssh, "0.0.0.0:2222".parse::<SocketAddr>().unwrap());
        // Client commands share data_dir with serve, so they find the gateway the file describes.
        let cli = parse(&["nodes", "ls"], FULL).unwrap();
        assert_eq!(cli.data_dir, Path::new("/srv/gw"));
    }

    #[test]
    fn bad_values_name_the_key_and_the_line() {
        for (text, expected) in [
            ("\nssh = \"nowhere\"\n", "`ssh` in {} (line 2): invalid value 'nowhere' for '--ssh <SSH>'"),
            ("insecure = \"yes\"\n", "`insecure` in {} (line 1): expected true or false, found string"),
            ("ttl = \"1h\"\n", "unknown key `ttl` in {} (line 1); known keys: alert_rules, api, audit_denied_every, audit_keep, audit_max_age, audit_max_bytes, data_dir, dead_after, host_key, insecure, log, max_answer_bytes, max_nodes, metrics_listen, metrics_retention, shutdown_grace, ssh, ssh_public, sshd, system_sshd"),
        ] {
            let (result, path) = parse_showing(&["serve"], text);
            let err = format!("{:#}", result.unwrap_err());
            let expected = expected.replace("{}", &path);
            assert!(err.starts_with(&expected), "\n got: {err}\nwant: {expected}");
        }
    }

    #[test]
    fn every_setting_is_its_long_flag_in_env_and_file_and_is_documented() {
        let docs = include_str!("../../docs/deploy.md");
        for (key, arg) in settings(&Cli::command()) {
            let long = arg.get_long().unwrap();
            assert_eq!(key, long.replace('-', "_"), "key of --{long}");
            let env = format!("BURROW_{}", key.to_ascii_uppercase());
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/deploy.md lacks `{key}`"
            );
            assert!(docs.contains(&env), "docs/deploy.md lacks {env}");
        }
    }
}
