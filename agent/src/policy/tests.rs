//! The resolver and the matcher: every reading of a command that is not the executed one is refused.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

use super::*;

fn policy(text: &str) -> Policy {
    Policy::parse(text, Path::new("policy.toml")).unwrap()
}

fn argv(args: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: Some(args.iter().map(|s| s.to_string()).collect()),
        ..ExecSpec::default()
    }
}

const PATH: Option<&str> = Some("/usr/local/bin:/usr/bin:/bin");
const MINUTE: Duration = Duration::from_secs(60);

fn rule_of(p: &Policy, spec: &ExecSpec) -> &'static str {
    p.check_exec(spec, MINUTE, PATH).unwrap_err().rule
}

fn uptime() -> Policy {
    policy("mode = \"allowlist\"\n[[rule]]\nprogram = \"/usr/bin/uptime\"\n")
}

#[test]
fn a_listed_program_resolves_through_path_to_its_canonical_file() {
    let plan = uptime()
        .check_exec(&argv(&["uptime"]), MINUTE, PATH)
        .unwrap();
    let real = std::fs::canonicalize("/usr/bin/uptime").unwrap();
    assert_eq!(plan.program, real);
    assert_eq!(plan.arg0.as_deref(), Some(real.to_str().unwrap()));
}

#[test]
fn wrappers_are_refused_by_the_wrapper_rule() {
    let p = uptime();
    assert_eq!(rule_of(&p, &argv(&["env", "uptime"])), "wrapper");
    assert_eq!(rule_of(&p, &argv(&["env", "-S", "uptime"])), "wrapper");
    assert_eq!(rule_of(&p, &argv(&["sh", "-c", "uptime"])), "wrapper");
    assert_eq!(rule_of(&p, &argv(&["/bin/sh", "-c", "uptime"])), "wrapper");
    assert_eq!(rule_of(&p, &argv(&["nohup", "uptime"])), "wrapper");
    assert_eq!(rule_of(&p, &argv(&["timeout", "5", "uptime"])), "wrapper");
}

#[test]
fn interpreters_with_code_are_refused() {
    assert_eq!(
        rule_of(&uptime(), &argv(&["python3", "-c", "print(1)"])),
        "interpreter"
    );
    assert_eq!(
        rule_of(&uptime(), &argv(&["perl", "-e", "print 1"])),
        "interpreter"
    );
}

#[test]
fn a_symlink_named_like_the_allowed_program_is_judged_by_its_target() {
    let dir = tempfile::tempdir().unwrap();
    symlink("/bin/sh", dir.path().join("uptime")).unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let mut spec = argv(&["uptime"]);
    let refused = uptime().check_exec(&spec, MINUTE, Some(&path)).unwrap_err();
    assert_eq!(refused.rule, "wrapper");
    // The same through the job's own PATH (which the env rules refuse first unless allowed).
    spec.env = BTreeMap::from([("PATH".to_string(), path.clone())]);
    let p = policy(
        "mode = \"allowlist\"\nallow_env = [\"PATH\"]\n[[rule]]\nprogram = \"/usr/bin/uptime\"\n",
    );
    assert_eq!(
        p.check_exec(&spec, MINUTE, PATH).unwrap_err().rule,
        "wrapper"
    );
}

#[test]
fn an_absolute_path_to_another_program_is_not_listed() {
    assert_eq!(rule_of(&uptime(), &argv(&["/bin/true"])), "allowlist");
    assert_eq!(
        rule_of(&uptime(), &argv(&["no-such-program-here"])),
        "allowlist"
    );
}

#[test]
fn shell_strings_need_allow_shell() {
    let line = ExecSpec {
        command: Some("uptime".into()),
        ..ExecSpec::default()
    };
    assert_eq!(rule_of(&uptime(), &line), "allow_shell");
    let p = policy("mode = \"allowlist\"\nallow_shell = true\n");
    assert_eq!(
        p.check_exec(&line, MINUTE, PATH).unwrap().program,
        PathBuf::from("/bin/sh")
    );
}

#[test]
fn args_exact_and_prefix() {
    let p = policy(
        "mode = \"allowlist\"\n[[rule]]\nprogram = \"/bin/echo\"\nargs = [\"hi\"]\n[[rule]]\nprogram = \"/bin/ls\"\nargs_prefix = [\"-l\"]\n",
    );
    assert!(p.check_exec(&argv(&["echo", "hi"]), MINUTE, PATH).is_ok());
    assert_eq!(rule_of(&p, &argv(&["echo", "hi", "there"])), "allowlist");
    assert!(p
        .check_exec(&argv(&["ls", "-l", "/tmp"]), MINUTE, PATH)
        .is_ok());
    assert_eq!(rule_of(&p, &argv(&["ls", "/tmp"])), "allowlist");
}

#[test]
fn loader_variables_are_refused_unless_allowed() {
    let mut spec = argv(&["uptime"]);
    spec.env = BTreeMap::from([("LD_PRELOAD".to_string(), "/tmp/x.so".to_string())]);
    assert_eq!(rule_of(&uptime(), &spec), "env");
    let p = policy(
        "mode = \"allowlist\"\nallow_env = [\"LD_*\"]\n[[rule]]\nprogram = \"/usr/bin/uptime\"\n",
    );
    assert!(p.check_exec(&spec, MINUTE, PATH).is_ok());
}

#[test]
fn deny_all_refuses_and_allow_all_is_the_default() {
    assert_eq!(
        rule_of(&policy("mode = \"deny-all\""), &argv(&["true"])),
        "deny-all"
    );
    let p = policy("");
    assert_eq!(p.mode, Mode::AllowAll);
    assert!(p.file_dirs.is_none());
    // No file at all is the same policy, services included.
    assert_eq!(p.summary(), Policy::default().summary());
    assert!(p.summary().services);
    assert!(p.check_exec(&argv(&["env", "true"]), MINUTE, PATH).is_ok());
}

#[test]
fn max_runtime_caps_the_timeout() {
    let p = policy("max_runtime = \"10s\"");
    let mut spec = argv(&["true"]);
    spec.timeout_s = 600;
    assert_eq!(
        p.check_exec(&spec, MINUTE, PATH).unwrap().timeout,
        Duration::from_secs(10)
    );
    assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
    assert_eq!(parse_duration("0"), None);
    assert_eq!(parse_duration("ten"), None);
}

#[test]
fn bad_files_are_errors_with_the_file_named() {
    for bad in [
        "mode = \"maybe\"",
        "modee = \"allowlist\"",
        "[[rule]]\nprogram = \"bin/ls\"",
        "max_runtime = \"x\"",
    ] {
        let e = Policy::parse(bad, Path::new("/etc/p.toml")).unwrap_err();
        assert!(format!("{e:#}").contains("/etc/p.toml"), "{bad}: {e:#}");
    }
}

#[test]
fn file_dirs_confine_paths_and_symlinks_cannot_escape() {
    let root = tempfile::tempdir().unwrap();
    let drop = root.path().join("drop");
    std::fs::create_dir(&drop).unwrap();
    symlink("/etc", drop.join("out")).unwrap();
    let p = policy(&format!(
        "mode = \"deny-all\"\nfile_dirs = [{:?}]",
        drop.display().to_string()
    ));
    assert!(p.check_file("put", &drop.join("a.txt")).is_ok());
    assert_eq!(
        p.check_file("put", &drop.join("../a.txt"))
            .unwrap_err()
            .rule,
        "file_dirs"
    );
    assert!(p.check_file("put", &drop.join("out/passwd")).is_err());
    assert!(p.check_file("get", &drop.join("out/passwd")).is_err());
    assert!(p.check_file("get", Path::new("/etc/passwd")).is_err());
    assert!(policy("mode = \"allowlist\"")
        .check_file("get", Path::new("/etc/hostname"))
        .is_err());
}
