use clap::Parser;
use serde_json::json;

use super::*;
use crate::cli::{Cli, Command};

fn parse(args: &[&str]) -> Result<ExecArgs, clap::Error> {
    let mut all = vec!["gateway", "exec"];
    all.extend_from_slice(args);
    match Cli::try_parse_from(all)?.command {
        Command::Exec(args) => Ok(args),
        other => panic!("parsed as {other:?}"),
    }
}

fn body_of(args: &[&str]) -> Value {
    body(&parse(args).unwrap(), &Stdin::None)
}

#[test]
fn words_are_joined_like_ssh_and_hyphens_pass_on() {
    assert_eq!(body_of(&["pi-1", "uname", "-a"])["command"], "uname -a");
    assert_eq!(
        body_of(&["pi-1", "echo $HOME && ls"])["command"],
        "echo $HOME && ls"
    );
    assert_eq!(
        body_of(&["pi-1", "ls", "-la", "/tmp"])["command"],
        "ls -la /tmp"
    );
    // The old form with `--` still works.
    assert_eq!(
        body_of(&["pi-1", "--", "uname", "-a"])["command"],
        "uname -a"
    );
    // Options of exec before the command are options; after it, words of the command.
    let args = parse(&["--json", "pi-1", "--lane", "x", "ls", "--json", "--lane"]).unwrap();
    assert!(args.json);
    assert_eq!(args.lane.as_deref(), Some("x"));
    assert_eq!(args.args, ["ls", "--json", "--lane"]);
    assert_eq!(body_of(&["pi-1", "ls", "--", "-x"])["command"], "ls -- -x");
    // A command is required.
    assert!(parse(&["pi-1"]).is_err());
}

#[test]
fn argv_sends_the_words_as_a_program_and_arguments() {
    let body = body_of(&["--argv", "pi-1", "sh", "-c", "echo a && echo b"]);
    assert_eq!(body["argv"], json!(["sh", "-c", "echo a && echo b"]));
    assert!(body.get("command").is_none());
}

#[test]
fn every_option_lands_in_the_request_body() {
    let body = body_of(&[
        "--batch",
        "25%",
        "--lane",
        "apt",
        "--queue-ttl",
        "1h",
        "--timeout",
        "10m",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--cwd",
        "/tmp",
        "glob:pi-*",
        "true",
    ]);
    assert_eq!(
        body,
        json!({"target": "glob:pi-*", "command": "true", "batch": "25%", "lane": "apt",
               "queue_ttl_s": 3600, "timeout_s": 600, "env": {"A": "1", "B": "x=y"},
               "cwd": "/tmp"})
    );
    assert_eq!(body_of(&["--batch", "3", "*", "true"])["batch"], 3);
    // The old `--timeout SECONDS` keeps working; nothing given: the gateway's defaults.
    assert_eq!(
        body_of(&["--timeout", "600", "pi-1", "true"])["timeout_s"],
        600
    );
    assert_eq!(
        body_of(&["pi-1", "true"]),
        json!({"target": "pi-1", "command": "true"})
    );
    let detached = super::body(&parse(&["--async", "pi-1", "true"]).unwrap(), &Stdin::None);
    assert_eq!(detached["async"], true);
}

#[test]
fn bad_option_values_are_usage_errors() {
    for bad in [
        &["--batch", "0", "pi-1", "true"][..],
        &["--batch", "101%", "pi-1", "true"],
        &["--batch", "x", "pi-1", "true"],
        &["--timeout", "0", "pi-1", "true"],
        &["--timeout", "soon", "pi-1", "true"],
        &["--env", "=v", "pi-1", "true"],
        &["--env", "novalue", "pi-1", "true"],
    ] {
        let err = parse(bad).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}");
    }
    assert_eq!(
        body_of(&["--timeout", "1.5s", "pi-1", "true"])["timeout_s"],
        2,
        "fractions round up, never to 0"
    );
}

#[test]
fn stdin_streams_to_one_node_and_goes_whole_to_many() {
    assert_eq!(stdin_mode(false, true, false), StdinMode::Stream);
    assert_eq!(stdin_mode(false, false, false), StdinMode::Whole);
    assert_eq!(stdin_mode(false, true, true), StdinMode::Whole, "--async");
    assert_eq!(stdin_mode(true, true, false), StdinMode::None);
    assert_eq!(stdin_mode(true, false, true), StdinMode::None);

    let args = parse(&["pi-1", "cat"]).unwrap();
    let streamed = body(&args, &Stdin::Stream);
    assert_eq!(streamed["stdin_stream"], true);
    assert_eq!(streamed["async"], true, "a streamed job is created async");
    let whole = body(
        &parse(&["*", "cat"]).unwrap(),
        &Stdin::Whole(b"hi\n\xff".to_vec()),
    );
    assert_eq!(whole["stdin_b64"], "aGkK/w==");
    assert!(whole.get("async").is_none());
}

#[test]
fn whole_stdin_is_capped_with_a_usage_error() {
    assert_eq!(read_whole(&b"12345"[..], 5).unwrap(), b"12345");
    let err = read_whole(&b"123456"[..], 5).unwrap_err();
    assert!(err.downcast_ref::<Usage>().is_some(), "{err:#}");
    assert!(format!("{err:#}").contains("-n sends no stdin"), "{err:#}");
}

#[test]
fn a_closed_stdout_exits_quietly_with_sigpipes_code() {
    let broken = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        .context("writing");
    assert_eq!(quiet_broken_pipe(Err(broken), 255), BROKEN_PIPE);
    assert_eq!(quiet_broken_pipe(Err(anyhow::anyhow!("no")), 255), 255);
    assert_eq!(quiet_broken_pipe(Err(Usage("bad".into()).into()), 255), 2);
    assert_eq!(quiet_broken_pipe(Ok(7), 255), 7);
}

/// The NDJSON of a response is read line by line into the printer, up to the summary; what comes
/// after is not read, and a cut stream is the printer's error.
#[test]
fn follow_reads_events_until_the_summary() {
    use std::io::Cursor;
    let body = "{\"event\":\"job\",\"job_id\":\"j1\",\"nodes\":[\"a\"]}\n\
                {\"event\":\"stdout\",\"job_id\":\"j1\",\"node\":\"a\",\"data\":\"hi\\n\"}\n\
                {\"event\":\"exit\",\"job_id\":\"j1\",\"node\":\"a\",\"state\":\"failed\",\"exit_code\":4}\n\
                {\"event\":\"summary\",\"job_id\":\"j1\",\"state\":\"failed\",\"summary\":{\"failed\":1}}\n\
                not json, never read\n";
    let response = crate::unix_http::tests::response(200, &[], Box::new(Cursor::new(body)));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut printer = Printer::new(&mut out, &mut err, false);
    follow(response, &mut printer, None).unwrap();
    assert_eq!(printer.finish(false).unwrap(), 4);
    drop(printer);
    assert_eq!(out, b"hi\n");

    let error = "{\"error\":\"no node matches glob:x*\",\"code\":\"no_match\"}";
    let response = crate::unix_http::tests::response(404, &[], Box::new(Cursor::new(error)));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut printer = Printer::new(&mut out, &mut err, false);
    let e = follow(response, &mut printer, None).unwrap_err();
    assert_eq!(format!("{e:#}"), "no node matches glob:x*");
}

#[test]
fn a_quoted_script_after_sh_c_gets_a_hint() {
    let hint = |args: &[&str]| split_shell_hint(&parse(args).unwrap());
    let h = hint(&["pi-1", "--", "sh", "-c", "echo a && exit 7"]).unwrap();
    assert!(
        h.contains("runs only \"echo\"") && h.contains("--argv"),
        "{h}"
    );
    assert!(
        hint(&["pi-1", "sh", "-c", "true"]).is_none(),
        "one word: nothing lost"
    );
    assert!(hint(&["--argv", "pi-1", "sh", "-c", "echo a"]).is_none());
    assert!(hint(&["pi-1", "echo a && exit 7"]).is_none());
    assert!(hint(&["pi-1", "uname", "-a"]).is_none());
}
