//! Jobs on a pseudo-terminal (`ExecSpec::tty`): the terminal, its size, resizing and Ctrl-C.
use super::*;
use burrow_core::protocol::Tty;

fn on_tty(line: &str, rows: u16, cols: u16) -> ExecSpec {
    ExecSpec {
        tty: Some(Tty {
            rows,
            cols,
            term: None,
        }),
        timeout_s: 30,
        ..command(line)
    }
}

/// Reads request 1's stdout until it contains `needle` (within 10 s); returns all of it so far.
fn read_until(gateway: &mut TestGateway, seen: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(seen)
        );
        match gateway.recv_within(left) {
            Some(Message::Data {
                id: 1,
                stream: stream::STDOUT,
                data,
            }) => seen.extend(data),
            Some(Message::Ping(value)) => gateway.send(&Message::Pong(value)),
            Some(other) => panic!(
                "unexpected {other:?}; stdout so far {:?}",
                String::from_utf8_lossy(seen)
            ),
            None => {}
        }
    }
}

/// Request 1's stdout and ending, skipping the stdin credit the agent grants.
fn collect(gateway: &mut TestGateway) -> (String, ExitStatus) {
    let mut stdout = Vec::new();
    loop {
        match gateway.recv() {
            Message::Data {
                id: 1,
                stream: stream::STDOUT,
                data,
            } => stdout.extend(data),
            Message::Credit {
                id: 1,
                stream: stream::STDIN,
                ..
            } => {}
            Message::Exit { id: 1, status } => {
                return (String::from_utf8_lossy(&stdout).into(), status)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_tty_job_runs_on_a_terminal_of_its_size() {
    let mut gateway = TestGateway::start();
    let outcome = gateway.run(on_tty(
        "[ -t 0 ] && [ -t 2 ] && echo tty; stty size; echo $TERM",
        30,
        100,
    ));
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    assert_eq!(stdout, "tty\r\n30 100\r\nxterm-256color\r\n");
    assert!(outcome.stderr.is_empty());
    assert_eq!(outcome.exit().exit_code, Some(0));
}

#[test]
fn resize_changes_the_size_and_sends_sigwinch() {
    let mut gateway = TestGateway::start();
    gateway.exec(
        1,
        on_tty(
            "trap 'stty size' WINCH; echo ready; while :; do sleep 0.05; done",
            24,
            80,
        ),
    );
    let mut seen = Vec::new();
    read_until(&mut gateway, &mut seen, "ready");
    gateway.send(&Message::Resize {
        id: 1,
        rows: 40,
        cols: 120,
    });
    read_until(&mut gateway, &mut seen, "40 120");
    gateway.send(&Message::Cancel { id: 1 });
    assert_eq!(gateway.collect(1).exit().signal, Some(9));
}

#[test]
fn ctrl_c_byte_interrupts_the_foreground_group() {
    let mut gateway = TestGateway::start();
    gateway.exec(1, on_tty("echo ready; sleep 100; echo after", 24, 80));
    let mut seen = Vec::new();
    read_until(&mut gateway, &mut seen, "ready");
    let sent = Instant::now();
    gateway.send(&Message::Data {
        id: 1,
        stream: stream::STDIN,
        data: vec![3],
    });
    let (stdout, status) = collect(&mut gateway);
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(!stdout.contains("after"), "{stdout:?}");
    assert_eq!(status.signal, Some(2), "{status:?}");
}

#[test]
fn signal_reaches_the_foreground_group() {
    let mut gateway = TestGateway::start();
    gateway.exec(1, on_tty("echo ready; sleep 100", 24, 80));
    let mut seen = Vec::new();
    read_until(&mut gateway, &mut seen, "ready");
    gateway.send(&Message::Signal { id: 1, signal: 15 });
    assert_eq!(gateway.collect(1).exit().signal, Some(15));
}

#[test]
fn stdin_goes_through_the_terminal() {
    let mut gateway = TestGateway::start();
    gateway.exec(1, on_tty("read line; echo got:$line", 24, 80));
    gateway.send(&Message::Data {
        id: 1,
        stream: stream::STDIN,
        data: b"hello\r".to_vec(),
    });
    let (stdout, status) = collect(&mut gateway);
    assert!(stdout.contains("got:hello"), "{stdout:?}");
    assert_eq!(status.exit_code, Some(0));
}
