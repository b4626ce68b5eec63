//! Issue 10: services a node declares, reached through the tunnel with `gateway connect`. A second
//! OpenSSH sshd started here plays the node's own sshd; real gateway, real agent, real `ssh`/`scp`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util::{bin, isolate, ssh_client, wait_until, Agent, Gateway, Proc};

/// The node's own sshd on 127.0.0.1: its host key, root's key from `dir/user`, a free port.
struct NodeSshd {
    _proc: Proc,
    port: u16,
    key: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

impl NodeSshd {
    fn start(dir: &Path) -> NodeSshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        keygen(&dir.join("host"));
        keygen(&dir.join("user"));
        std::fs::copy(dir.join("user.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
                 PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 PermitRootLogin prohibit-password\nMaxStartups 100:30:200\nMaxSessions 50\n\
                 Subsystem sftp internal-sftp\n",
                host = dir.join("host").display(),
                keys = dir.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let proc = Proc::spawn(cmd, dir.join("node-sshd.log"));
        let sshd = NodeSshd {
            _proc: proc,
            port,
            key: dir.join("user"),
        };
        wait_until(Duration::from_secs(10), "the node's sshd", || {
            ssh_client(port, &sshd.key)
                .args(["root@127.0.0.1", "true"])
                .status()
                .is_ok_and(|s| s.success())
        });
        sshd
    }

    /// `ssh` to the node's sshd through `gateway connect NODE ssh`.
    fn through(&self, gw: &Gateway) -> Command {
        let proxy = format!(
            "ProxyCommand={} --data-dir {} connect %h ssh",
            bin("gateway").display(),
            gw.data().display()
        );
        let mut cmd = ssh_client(1, &self.key);
        cmd.args(["-o", &proxy]);
        isolate(&mut cmd);
        cmd
    }
}

fn connect(gw: &Gateway, node: &str, service: &str) -> Command {
    let mut cmd = Command::new(bin("gateway"));
    isolate(&mut cmd)
        .arg("--data-dir")
        .arg(gw.data())
        .args(["connect", node, service]);
    cmd
}

/// An HTTP-ish echo service: answers each connection with what it read until the client's EOF.
fn echo_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).is_ok() {
                    let _ = conn.write_all(&got);
                }
            });
        }
    });
    port
}

fn node_with(gw: &Gateway, name: &str, services: &[String]) -> Agent {
    let mut extra: Vec<&str> = Vec::new();
    for s in services {
        extra.extend(["--service", s.as_str()]);
    }
    let agent = Agent::start_with(&gw.join(&[]), name, &extra);
    gw.wait_status(name, "online");
    agent
}

#[test]
fn ssh_through_gateway_connect_logs_in_runs_a_command_and_scp_keeps_50_mb_intact() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = NodeSshd::start(dir.path());
    let gw = Gateway::start();
    let _agent = node_with(&gw, "pi-1", &[format!("ssh=127.0.0.1:{}", sshd.port)]);

    // The node lists what it declares.
    wait_until(Duration::from_secs(10), "the node's services", || {
        gw.node("pi-1")["services"]
            == json!([{"name": "ssh", "target": format!("127.0.0.1:{}", sshd.port), "enabled": true}])
    });

    let out = sshd
        .through(&gw)
        .args(["root@pi-1", "echo through-the-tunnel; hostname >/dev/null"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through-the-tunnel\n");

    // scp of 50 MB of varied bytes, up and back, same SHA-256.
    let file = dir.path().join("fifty");
    let data: Vec<u8> = (0..50_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let remote = dir.path().join("remote-copy");
    let proxy = format!(
        "ProxyCommand={} --data-dir {} connect %h ssh",
        bin("gateway").display(),
        gw.data().display()
    );
    let mut scp = Command::new("scp");
    isolate(&mut scp)
        .args(["-F", "/dev/null", "-q", "-i"])
        .arg(&sshd.key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", &proxy])
        .arg(&file)
        .arg(format!("root@pi-1:{}", remote.display()));
    let out = scp.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "scp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = std::fs::read(&remote).unwrap();
    assert_eq!(Sha256::digest(&copied), Sha256::digest(&data));

    // Audited: who, which node and service, bytes and duration at the end.
    let (status, audit) = gw.api("GET", "/api/v1/audit?limit=200", None);
    assert_eq!(status, 200, "{audit}");
    let text = audit.to_string();
    assert!(text.contains("service.open"), "{text}");
    assert!(text.contains("service.end"), "{text}");
    assert!(text.contains("bytes_up"), "{text}");
}

#[test]
fn twenty_streams_and_an_exec_on_one_node_all_complete() {
    let port = echo_service();
    let gw = Gateway::start();
    let _agent = node_with(&gw, "pi-2", &[format!("echo=127.0.0.1:{port}")]);

    let exec = {
        let (api, token) = (gw.api, gw.token("operator"));
        std::thread::spawn(move || {
            let body = json!({"command": "sleep 1; echo exec-done", "timeout_s": 60});
            ureq::post(&format!("http://{api}/api/v1/nodes/pi-2/exec"))
                .header("Authorization", &format!("Bearer {token}"))
                .send(body.to_string())
                .unwrap()
                .into_body()
                .read_to_string()
                .unwrap()
        })
    };
    let streams: Vec<_> = (0..20)
        .map(|i| {
            let mut child = connect(&gw, "pi-2", "echo")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let payload = format!("stream {i}: {}\n", "x".repeat(100_000 + i));
            let mut stdin = child.stdin.take().unwrap();
            let p = payload.clone();
            std::thread::spawn(move || {
                stdin.write_all(p.as_bytes()).unwrap();
                // Dropping stdin is the half-close the echo service waits for.
            });
            (child, payload)
        })
        .collect();
    for (child, payload) in streams {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), payload);
    }
    let answer: Value = serde_json::from_str(&exec.join().unwrap()).unwrap();
    assert_eq!(answer["exit_code"], 0, "{answer}");
    assert!(answer.to_string().contains("exec-done"), "{answer}");
}

#[test]
fn undeclared_turned_off_and_viewer_streams_are_refused_with_a_clear_message() {
    let port = echo_service();
    let gw = Gateway::start();
    let agent = node_with(
        &gw,
        "pi-3",
        &[
            format!("echo=127.0.0.1:{port}"),
            format!("web=127.0.0.1:{port}"),
        ],
    );

    let refused = |service: &str| {
        let out = connect(&gw, "pi-3", service)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = refused("postgres");
    assert_eq!(code, Some(1));
    assert!(err.contains("declares no service \"postgres\""), "{err}");
    assert!(err.contains("it has: echo, web"), "{err}");

    // The node's owner turns `web` off; SIGHUP reloads the policy.
    std::fs::write(
        agent.dir.path().join("data/policy.toml"),
        "services_off = [\"web\"]\n",
    )
    .unwrap();
    let pid = agent.proc.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(Duration::from_secs(10), "the reloaded policy", || {
        refused("web").1.contains("turned service \"web\" off")
    });
    // The other service still works.
    let mut echo = connect(&gw, "pi-3", "echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    echo.stdin.take().unwrap().write_all(b"still on\n").unwrap();
    let out = echo.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still on\n");

    // Over the TCP API a viewer may not open streams; an operator without the upgrade is told how.
    let viewer = gw.token("viewer");
    let (status, body) = gw.api_as(
        &viewer,
        "POST",
        "/api/v1/nodes/pi-3/services/echo/connect",
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    let operator = gw.token("operator");
    let (status, body) = gw.api_as(
        &operator,
        "POST",
        "/api/v1/nodes/pi-3/services/echo/connect",
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Upgrade"),
        "{body}"
    );
}
