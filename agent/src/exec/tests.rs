//! Tests of running one command: output, streaming, bytes, credit, timeouts and process groups.
use super::*;
use crate::service::tests::{command, first_number, live_members, wait_until, TestGateway};
use burrow_core::protocol::INITIAL_WINDOW;

#[test]
fn stdout_stderr_and_exit_code() {
    let mut gateway = TestGateway::start();
    let outcome = gateway.run(command("echo out; echo err >&2; exit 3"));
    assert_eq!(outcome.stdout, b"out\n");
    assert_eq!(outcome.stderr, b"err\n");
    let status = outcome.exit();
    assert_eq!(
        (status.exit_code, status.signal, status.timed_out),
        (Some(3), None, false)
    );
}

#[test]
fn output_streams_before_exit() {
    let mut gateway = TestGateway::start();
    let sent = Instant::now();
    gateway.exec(1, command("echo a; sleep 2; echo b"));
    assert_eq!(
        gateway.recv(),
        Message::Data {
            id: 1,
            stream: stream::STDOUT,
            data: b"a\n".to_vec()
        }
    );
    let first = sent.elapsed();
    let rest = gateway.collect(1);
    let exit = sent.elapsed();
    assert_eq!(rest.stdout, b"b\n");
    assert!(
        first < Duration::from_secs(1),
        "first output after {first:?}"
    );
    assert!(
        exit - first > Duration::from_secs(1),
        "output {first:?}, exit {exit:?}"
    );
}

#[test]
fn non_utf8_output_round_trips() {
    let mut gateway = TestGateway::start();
    let outcome = gateway.run(command(r"printf '\377\376\000x'"));
    assert_eq!(outcome.stdout, [0xff, 0xfe, 0x00, b'x']);
}

#[test]
fn timeout_kills_the_whole_group() {
    let mut gateway = TestGateway::start();
    gateway.exec(
        1,
        ExecSpec {
            timeout_s: 1,
            ..command("echo $$; sleep 100 & sleep 100")
        },
    );
    let (group, _) = first_number(&mut gateway, 1);
    let sleeps = || {
        live_members(group)
            .iter()
            .filter(|(_, name)| name == "sleep")
            .count()
    };
    assert!(wait_until(Duration::from_secs(5), || sleeps() == 2));
    let status = gateway.collect(1).exit().clone();
    assert!(status.timed_out);
    assert_eq!((status.exit_code, status.signal), (None, Some(9)));
    assert!((1000..5000).contains(&status.duration_ms), "{status:?}");
    assert!(
        wait_until(Duration::from_secs(5), || live_members(group).is_empty()),
        "left behind: {:?}",
        live_members(group)
    );
}

/// `sleep 100 & echo x`: the shell is done, but the background sleep holds the pipes, so the
/// request lasts until the deadline, and then the sleep is killed with the group.
#[test]
fn background_child_holding_the_pipes_runs_into_the_timeout() {
    let mut gateway = TestGateway::start();
    gateway.exec(
        1,
        ExecSpec {
            timeout_s: 1,
            ..command("echo $$; sleep 100 & echo x")
        },
    );
    let (group, mut stdout) = first_number(&mut gateway, 1);
    let outcome = gateway.collect(1);
    stdout.extend(&outcome.stdout);
    assert_eq!(stdout, b"x\n");
    assert!(outcome.exit().timed_out);
    assert!(wait_until(Duration::from_secs(5), || live_members(group).is_empty()));
}

/// Like ssh: a job that let go of the pipes outlives a request that ended normally.
#[test]
fn detached_background_job_survives_a_normal_end() {
    let mut gateway = TestGateway::start();
    let outcome = gateway.run(command("sleep 100 >/dev/null 2>&1 & echo $!"));
    let status = outcome.exit();
    assert_eq!((status.exit_code, status.timed_out), (Some(0), false));
    let pid: i32 = String::from_utf8_lossy(&outcome.stdout)
        .trim()
        .parse()
        .unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "));
    let _ = rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
    assert!(alive);
}

/// A process that left the group keeps the pipes open forever; the request must still end.
#[test]
fn escaped_process_holding_the_pipes_does_not_hang_the_request() {
    let mut gateway = TestGateway::start();
    gateway.exec(
        1,
        ExecSpec {
            timeout_s: 1,
            ..command("setsid sh -c 'echo $$; exec sleep 100'")
        },
    );
    let (escaped, _) = first_number(&mut gateway, 1);
    let sent = Instant::now();
    let status = gateway.collect(1).exit().clone();
    let _ = rustix::process::kill_process(Pid::from_raw(escaped).unwrap(), Signal::KILL);
    assert!(status.timed_out);
    assert!(sent.elapsed() < Duration::from_secs(1) + KILL_GRACE + Duration::from_secs(2));
}

#[test]
fn output_stops_at_the_credit_and_resumes_on_credit() {
    const TOTAL: usize = 2_000_000;
    let mut gateway = TestGateway::start();
    gateway.exec(1, command("head -c 2000000 /dev/zero"));
    let window = INITIAL_WINDOW as usize;
    let mut got = 0;
    while got < window {
        match gateway.recv() {
            Message::Data {
                id: 1,
                stream: stream::STDOUT,
                data,
            } => {
                assert!(data.len() <= MAX_CHUNK && data.iter().all(|&b| b == 0));
                got += data.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, window);
    // Without credit, nothing more may come (the command is blocked on its pipe).
    if let Some(frame) = gateway.recv_within(Duration::from_millis(300)) {
        panic!("sent beyond the window: {frame:?}");
    }
    gateway.send(&Message::Credit {
        id: 1,
        stream: stream::STDOUT,
        bytes: (TOTAL - window) as u32,
    });
    let rest = gateway.collect(1);
    assert_eq!(got + rest.stdout.len(), TOTAL);
    assert_eq!(rest.exit().exit_code, Some(0));
}

#[test]
fn cancel_kills_the_group() {
    let mut gateway = TestGateway::start();
    gateway.exec(1, command("echo $$; sleep 100; echo never"));
    let (group, _) = first_number(&mut gateway, 1);
    gateway.send(&Message::Cancel { id: 1 });
    let outcome = gateway.collect(1);
    assert!(outcome.stdout.is_empty());
    let status = outcome.exit();
    assert_eq!(
        (status.exit_code, status.signal, status.timed_out),
        (None, Some(9), false)
    );
    assert!(wait_until(Duration::from_secs(5), || live_members(group).is_empty()));
}

#[test]
fn argv_runs_without_a_shell() {
    let mut gateway = TestGateway::start();
    let spec = ExecSpec {
        argv: Some(vec!["printf".into(), "%s".into(), "a b;$HOME `x`".into()]),
        ..ExecSpec::default()
    };
    assert_eq!(gateway.run(spec).stdout, b"a b;$HOME `x`");
}

#[test]
fn env_and_cwd_are_applied() {
    let mut gateway = TestGateway::start();
    let spec = ExecSpec {
        argv: Some(vec![
            "sh".into(),
            "-c".into(),
            r#"printf '%s|' "$BURROW_T"; pwd"#.into(),
        ]),
        env: [("BURROW_T".to_string(), "v a l".to_string())].into(),
        cwd: Some("/".into()),
        ..ExecSpec::default()
    };
    assert_eq!(gateway.run(spec).stdout, b"v a l|/\n");
}

#[test]
fn unstartable_requests_fail_with_the_reason() {
    let mut gateway = TestGateway::start();
    let missing_cwd = ExecSpec {
        cwd: Some("/nonexistent/burrow".into()),
        ..command("true")
    };
    assert_eq!(
        gateway.run(missing_cwd).failed.as_deref(),
        Some("cwd /nonexistent/burrow: No such file or directory")
    );
    let missing_program = ExecSpec {
        argv: Some(vec!["/nonexistent/burrow-prog".into()]),
        ..ExecSpec::default()
    };
    assert_eq!(
        gateway.run(missing_program).failed.as_deref(),
        Some("spawning `/nonexistent/burrow-prog`: No such file or directory")
    );
    let both = ExecSpec {
        argv: Some(vec!["true".into()]),
        ..command("true")
    };
    assert!(gateway.run(both).failed.unwrap().contains("not both"));
}

#[test]
fn describe_drops_the_os_error_suffix() {
    let e = io::Error::from_raw_os_error(2);
    assert_eq!(describe(&e), "No such file or directory");
}

#[test]
fn exactly_one_of_command_and_argv() {
    let both = ExecSpec {
        command: Some("true".into()),
        argv: Some(vec!["true".into()]),
        ..ExecSpec::default()
    };
    assert!(build(&both, &Plan::default(), None)
        .unwrap_err()
        .contains("not both"));
    assert!(build(&ExecSpec::default(), &Plan::default(), None)
        .unwrap_err()
        .contains("nothing to run"));
    let empty = ExecSpec {
        argv: Some(vec![]),
        ..ExecSpec::default()
    };
    assert!(build(&empty, &Plan::default(), None)
        .unwrap_err()
        .contains("empty"));
}

#[test]
fn smuggled_environment_names_are_refused() {
    let spec = ExecSpec {
        command: Some("true".into()),
        env: [("A=B".to_string(), "x".to_string())].into(),
        ..ExecSpec::default()
    };
    assert!(build(&spec, &Plan::default(), None)
        .unwrap_err()
        .contains("invalid environment variable name"));
}

/// A hostile timeout must not overflow the deadline arithmetic (a panic would kill the agent).
#[test]
fn huge_timeout_is_not_a_panic() {
    let mut gateway = TestGateway::start();
    let spec = ExecSpec {
        timeout_s: u64::MAX,
        ..command("echo ok")
    };
    assert_eq!(gateway.run(spec).stdout, b"ok\n");
}

mod tty;
