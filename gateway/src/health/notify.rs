//! Telling people: the alert hook (a command run by `/bin/sh -c` with the alert as JSON on stdin,
//! killed after its timeout) and the Alertmanager webhook (`POST /api/v2/alerts`), on a thread of
//! their own ("alert-notify") behind a bounded queue, so a slow or hanging hook never holds up the
//! monitor: when the queue is full a notice is dropped and that is logged.
//!
//! The webhook is a minimal HTTP/1.1 POST over a `TcpStream`, its answer's head read with
//! `httparse` (already a dependency, for the CLI): Alertmanager sits on the gateway's own network
//! and speaks plain HTTP there, and a full HTTP client would be the gateway's largest dependency
//! for one request a minute. For HTTPS, use the hook with curl (docs/alerts.md).
//!
//! Alertmanager forgets an alert it has not heard of for its `resolve_timeout` (5 min), so the
//! monitor sends the firing ones again every minute ([`Notice::Repeat`]).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};

use super::rules::{Hook, Webhook};
use super::{Alert, AlertState};
use crate::registry::rfc3339;

/// Notices waiting for the notifier; more are dropped (and logged).
const QUEUE: usize = 256;

/// What the notifier is asked to do.
pub enum Notice {
    /// An alert fired or resolved: the hook and the webhook hear of it.
    Changed {
        alert: Alert,
        hook: Option<Hook>,
        webhook: Option<Webhook>,
    },
    /// The alerts still firing, for the webhook (Alertmanager's keep-alive).
    Repeat {
        alerts: Vec<Alert>,
        webhook: Webhook,
    },
}

/// The notifier's queue; dropping it ends the thread (after what is queued).
pub struct Notifier {
    tx: Option<Sender<Notice>>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    pub fn start() -> std::io::Result<Notifier> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("alert-notify".into())
            .spawn(move || run(&rx))?;
        Ok(Notifier {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a notice; never waits.
    pub fn send(&self, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(notice) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => log::warn!(
                "alert notifications are {QUEUE} behind (a slow hook or webhook?): one dropped"
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once it has sent what is queued.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the alert notifier thread panicked");
            }
        }
    }
}

fn run(rx: &Receiver<Notice>) {
    for notice in rx {
        match notice {
            Notice::Changed {
                alert,
                hook,
                webhook,
            } => {
                if let Some(hook) = hook {
                    if let Err(e) = run_hook(&hook, &alert) {
                        log::warn!("alert hook for {} {}: {e}", alert.rule, state(&alert));
                    }
                }
                if let Some(w) = webhook {
                    if let Err(e) = post(&w, &[alert]) {
                        log::warn!("alert webhook {}: {e}", w.url);
                    }
                }
            }
            Notice::Repeat { alerts, webhook } => {
                if let Err(e) = post(&webhook, &alerts) {
                    log::warn!("alert webhook {}: {e}", webhook.url);
                }
            }
        }
    }
}

fn state(a: &Alert) -> &'static str {
    match a.state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

/// The alert as the hook reads it on stdin (one JSON object and a newline).
pub fn hook_json(a: &Alert) -> Value {
    let mut v = serde_json::to_value(a).expect("alerts serialize");
    v["started"] = json!(rfc3339(a.started_at));
    v["resolved"] = json!(a.resolved_at.map(rfc3339));
    v
}

/// Runs the hook with the alert on stdin; kills it (its process group) after the timeout.
pub fn run_hook(hook: &Hook, alert: &Alert) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&hook.command)
        .env("BURROW_ALERT_RULE", &alert.rule)
        .env("BURROW_ALERT_STATE", state(alert))
        .env("BURROW_ALERT_NODE", alert.node.as_deref().unwrap_or(""))
        .env("BURROW_ALERT_SEVERITY", &alert.severity)
        .env("BURROW_ALERT_SUMMARY", &alert.summary)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting /bin/sh -c {:?}: {e}", hook.command))?;
    let mut body = serde_json::to_vec(&hook_json(alert)).expect("JSON");
    body.push(b'\n');
    // A hook that does not read its stdin gets a broken pipe here; that is its business.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let deadline = Instant::now() + hook.timeout;
    // Nothing wakes this thread when the child exits: a short poll against the deadline does.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let group = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                let _ = child.wait();
                return Err(format!(
                    "killed after its timeout of {}",
                    humantime::format_duration(hook.timeout)
                ));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(2048).read_to_string(&mut err);
    }
    Err(format!("it failed ({status}): {}", err.trim()))
}

/// `(host:port, path)` of a plain `http://` URL.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(
            "only plain http:// URLs are supported (for https, use the hook with curl)".into(),
        );
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/api/v2/alerts"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host (and no user name)".into());
    }
    let authority = match authority.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => authority.to_string(),
        _ => format!("{authority}:80"),
    };
    Ok((authority, path.to_string()))
}

/// The alerts in Alertmanager's API v2 shape.
pub fn alertmanager_body(alerts: &[Alert]) -> Value {
    let items: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let mut item = json!({
                "labels": {
                    "alertname": a.rule,
                    "severity": a.severity,
                    "node": a.node.as_deref().unwrap_or("gateway"),
                    "source": "burrow",
                },
                "annotations": {"summary": a.summary},
                "startsAt": rfc3339(a.started_at),
            });
            if let Some(t) = a.resolved_at {
                item["endsAt"] = json!(rfc3339(t));
            }
            item
        })
        .collect();
    Value::Array(items)
}

/// POSTs the alerts to the webhook; a non-2xx answer is an error.
pub fn post(w: &Webhook, alerts: &[Alert]) -> Result<(), String> {
    let (authority, path) = parse_url(&w.url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, w.timeout)
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let _ = s.set_read_timeout(Some(w.timeout));
    let _ = s.set_write_timeout(Some(w.timeout));
    let body = serde_json::to_vec(&alertmanager_body(alerts)).expect("JSON");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: burrow-gateway/{}\r\n\r\n",
        body.len(),
        burrow_core::VERSION
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(&body))
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("the connection closed without an answer".into());
        }
        answer.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&answer) {
            Ok(httparse::Status::Complete(_)) => {
                let code = resp.code.unwrap_or(0);
                return match code {
                    200..=299 => Ok(()),
                    _ => Err(format!("answered {code} {}", resp.reason.unwrap_or(""))),
                };
            }
            Ok(httparse::Status::Partial) if answer.len() < 16 << 10 => continue,
            Ok(httparse::Status::Partial) => return Err("answer head too long".into()),
            Err(e) => return Err(format!("not an HTTP answer: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn alert(state: AlertState) -> Alert {
        Alert {
            id: 7,
            rule: "disk_full".into(),
            node: Some("pi-1".into()),
            severity: "warning".into(),
            state,
            summary: "disk / 93 % (threshold > 90 %)".into(),
            value: Some(93.0),
            started_at: 1_700_000_000,
            resolved_at: (state == AlertState::Resolved).then_some(1_700_000_600),
        }
    }

    #[test]
    fn the_hook_gets_the_alert_on_stdin_and_a_hanging_one_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let hook = Hook {
            command: format!(
                "cat > {}; echo \"$BURROW_ALERT_STATE\" >> {0}",
                out.display()
            ),
            timeout: Duration::from_secs(10),
        };
        run_hook(&hook, &alert(AlertState::Resolved)).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        let (json, env) = got.split_once('\n').unwrap();
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["rule"], "disk_full");
        assert_eq!(v["state"], "resolved");
        assert_eq!(v["resolved"], "2023-11-14T22:23:20Z");
        assert_eq!(env.trim(), "resolved");

        let failing = Hook {
            command: "echo nope >&2; exit 3".into(),
            timeout: Duration::from_secs(10),
        };
        let err = run_hook(&failing, &alert(AlertState::Firing)).unwrap_err();
        assert!(err.contains("nope") && err.contains('3'), "{err}");

        let hanging = Hook {
            command: "sleep 30".into(),
            timeout: Duration::from_millis(300),
        };
        let t = Instant::now();
        let err = run_hook(&hanging, &alert(AlertState::Firing)).unwrap_err();
        assert!(err.contains("timeout"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// A fake Alertmanager: one connection, the request read until its body is complete.
    fn fake_alertmanager(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v2/alerts", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        s.write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .unwrap();
                        return text;
                    }
                }
            }
        });
        (url, t)
    }

    #[test]
    fn the_webhook_posts_alertmanager_v2_alerts() {
        let (url, am) = fake_alertmanager("200 OK");
        let w = Webhook {
            url,
            timeout: Duration::from_secs(5),
        };
        post(&w, &[alert(AlertState::Resolved)]).unwrap();
        let req = am.join().unwrap();
        assert!(req.starts_with("POST /api/v2/alerts HTTP/1.1\r\n"), "{req}");
        let body: Value = serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "disk_full");
        assert_eq!(body[0]["labels"]["node"], "pi-1");
        assert_eq!(body[0]["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(body[0]["endsAt"], "2023-11-14T22:23:20Z");

        let (url, _am) = fake_alertmanager("400 Bad Request");
        let w = Webhook {
            url,
            timeout: Duration::from_secs(5),
        };
        let err = post(&w, &[alert(AlertState::Firing)]).unwrap_err();
        assert!(err.contains("400"), "{err}");
    }

    #[test]
    fn urls_are_plain_http_with_a_host() {
        assert_eq!(
            parse_url("http://am:9093/api/v2/alerts").unwrap(),
            ("am:9093".into(), "/api/v2/alerts".into())
        );
        assert_eq!(
            parse_url("http://am").unwrap(),
            ("am:80".into(), "/api/v2/alerts".into())
        );
        assert!(parse_url("https://am/").unwrap_err().contains("plain http"));
        assert!(parse_url("http://u@am/").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
