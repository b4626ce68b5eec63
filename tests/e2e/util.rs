//! Test harness: builds the real binaries once, starts a real gateway (which runs a real OpenSSH sshd on
//! 127.0.0.1) and real agents in temp dirs on free ports, and kills every process on drop.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Waits until `cond` holds, checking every 50 ms, or panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `target/<profile>/<name>`, built once per test run.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "burrow-gateway",
                "-p",
                "burrow-agent",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
        // target/debug/deps/e2e-… → target/debug
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().to_path_buf()
    });
    dir.join(name)
}

/// A child process killed (SIGTERM, then SIGKILL) on drop, with its stderr in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        isolate(&mut cmd);
        let err = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (up to 10 s) for the exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A running gateway with its own data dir, API and sshd ports.
pub struct Gateway {
    // `proc` before `dir`: fields drop in order, and the log (printed on a failing test) lives in `dir`.
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub api: SocketAddr,
    pub ssh: SocketAddr,
    extra: Vec<String>,
    admin: String,
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    /// A gateway with extra `serve` arguments.
    pub fn start_with(extra: &[&str]) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("burrow-gw")
            .tempdir()
            .unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let extra = extra.iter().map(|a| a.to_string()).collect();
        Gateway::start_in(dir, any, any, extra)
    }

    pub fn start_in(
        dir: tempfile::TempDir,
        api: SocketAddr,
        ssh: SocketAddr,
        extra: Vec<String>,
    ) -> Gateway {
        let data = dir.path().join("data");
        let _ = std::fs::remove_file(data.join("run.json"));
        let mut cmd = Command::new(bin("gateway"));
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--log", "debug", "serve", "--api"]);
        cmd.arg(api.to_string())
            .arg("--ssh")
            .arg(ssh.to_string())
            .args(&extra);
        let log = dir.path().join(format!(
            "gateway-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let mut proc = Proc::spawn(cmd, log);
        let run = data.join("run.json");
        wait_until(Duration::from_secs(30), "gateway run.json", || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", proc.log_text());
            }
            run.exists()
        });
        let info: Value = serde_json::from_slice(&std::fs::read(&run).unwrap()).unwrap();
        let api = info["api"].as_str().unwrap().parse().unwrap();
        let ssh = info["ssh"].as_str().unwrap().parse().unwrap();
        let mut gw = Gateway {
            dir,
            proc,
            api,
            ssh,
            extra,
            admin: String::new(),
        };
        gw.admin = gw.token("gateway");
        gw
    }

    /// Stops this gateway and starts a new one on the same data dir and ports.
    pub fn restart(self) -> Gateway {
        self.restart_after(|_| {})
    }

    /// Kills this gateway with SIGKILL (no chance to clean up) and starts it again on the same data
    /// dir and ports.
    pub fn crash_restart(self) -> Gateway {
        let Gateway {
            dir,
            mut proc,
            api,
            ssh,
            extra,
            ..
        } = self;
        proc.child.kill().unwrap();
        proc.child.wait().unwrap();
        drop(proc);
        Gateway::start_in(dir, api, ssh, extra)
    }

    /// Stops this gateway, runs `offline` on its data dir, then starts it again as `restart` does.
    pub fn restart_after(self, offline: impl FnOnce(&Path)) -> Gateway {
        let data = self.data();
        let Gateway {
            dir,
            mut proc,
            api,
            ssh,
            extra,
            ..
        } = self;
        proc.terminate();
        drop(proc);
        offline(&data);
        Gateway::start_in(dir, api, ssh, extra)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs the gateway CLI against this gateway's data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        isolate(&mut Command::new(bin("gateway")))
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn token(&self, role: &str) -> String {
        let out = self.cli(&["token", "create", "--role", role]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn join(&self, extra: &[&str]) -> String {
        let mut args = vec!["join", "create"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// An API call with the admin token; returns status and JSON.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(&self.admin.clone(), method, path, body)
    }

    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let auth = format!("Bearer {token}");
        let url = self.url(path);
        let resp = match method {
            "GET" => agent.get(&url).header("Authorization", &auth).call(),
            "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
            "PUT" => agent
                .put(&url)
                .header("Authorization", &auth)
                .send(body.map(|b| b.to_string()).unwrap_or_default()),
            "PATCH" => agent
                .patch(&url)
                .header("Authorization", &auth)
                .send(body.unwrap_or(Value::Null).to_string()),
            _ => agent
                .post(&url)
                .header("Authorization", &auth)
                .send(body.unwrap_or(Value::Null).to_string()),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn node(&self, id: &str) -> Value {
        let (status, v) = self.api("GET", &format!("/api/v1/nodes/{id}"), None);
        if status == 200 {
            v
        } else {
            Value::Null
        }
    }

    pub fn wait_status(&self, id: &str, want: &str) {
        wait_until(
            Duration::from_secs(30),
            &format!("node {id} {want}"),
            || self.node(id)["status"] == want,
        );
    }

    pub fn exec(&self, node: &str, body: Value) -> (u16, Value) {
        self.api("POST", &format!("/api/v1/nodes/{node}/exec"), Some(body))
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// A fresh gateway with one agent, `name`, joined and online.
pub fn online_node(name: &str) -> (Gateway, Agent) {
    let gw = Gateway::start();
    let agent = Agent::start(&gw.join(&[]), name);
    gw.wait_status(name, "online");
    (gw, agent)
}

/// A running agent with its own data dir.
pub struct Agent {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// `agent run --join <join> --name <name>` in a fresh data dir.
    pub fn start(join: &str, name: &str) -> Agent {
        Agent::start_with(join, name, &[])
    }

    /// Like [`Agent::start`], with more `agent run` arguments (`--capability gpu`, `--label k=v`).
    /// Commands it runs see `TEST_NODE=<name>`, so one broadcast command can act per node.
    pub fn start_with(join: &str, name: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("burrow-agent")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("name"), name).unwrap();
        let mut args = vec!["--join", join, "--name", name, "--capability", "test"];
        args.extend_from_slice(extra);
        let proc = Agent::spawn(dir.path(), &args);
        Agent { dir, proc }
    }

    fn spawn(dir: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("agent"));
        if let Ok(name) = std::fs::read_to_string(dir.join("name")) {
            cmd.env("TEST_NODE", name);
        }
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--log", "debug", "run"])
            .args(args);
        let log = dir.join(format!("agent-{}.log", std::process::id()));
        Proc::spawn(cmd, log)
    }

    /// Restarts `agent run` on the same data dir without a join string.
    pub fn restart(&mut self) {
        self.proc.terminate();
        self.proc = Agent::spawn(self.dir.path(), &[]);
    }
}

/// `agent join` one-shot in a fresh data dir; returns its output.
pub fn agent_join(join: &str, name: &str) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("burrow-join")
        .tempdir()
        .unwrap();
    Command::new(bin("agent"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["join", join, "--name", name])
        .output()
        .unwrap()
}

/// Keeps the developer's `/etc/burrow/*.toml` and `BURROW_*` variables out of the binaries under test.
pub fn isolate(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BURROW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("BURROW_CONFIG", "/dev/null")
}

/// OpenSSH's client for `127.0.0.1:port` with `key` only: no config file, agent or known_hosts, batch
/// mode, stdin closed. Callers add the options, the destination and what to run.
pub fn ssh_client(port: u16, key: &Path) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::null());
    cmd
}

/// Whether the peer closes the connection (EOF or reset) before `s`'s read timeout, skipping what
/// it says first (a node's Hello).
pub fn closes(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Child processes of `pid` (from /proc).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Field 4 after the `(comm)` part is the parent pid.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(p);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'))
        .unwrap_or(false)
}
