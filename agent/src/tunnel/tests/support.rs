//! Test support: a private OpenSSH sshd per test, echo services on both ends, and data helpers.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use burrow_core::identity::Identity;
use crossbeam_channel::Receiver;
use rustix::process::{kill_process, Pid, Signal};

use crate::tunnel::{Stream, TunnelConfig};

pub(super) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Polls a condition until it holds or the limit passes (the agent's one test helper for it).
pub(super) use crate::service::tests::wait_until;

/// Deterministic bytes (xorshift), different per seed.
pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A private sshd; killed (with every process it forked) on drop.
pub(super) struct Sshd {
    child: Child,
    pub(super) port: u16,
    dir: PathBuf,
    pub(super) host_fingerprint: String,
    /// The node key sshd accepts, and the ports its key line permits.
    node: Identity,
    pub(super) listen_ports: [u16; 2],
}

impl Sshd {
    /// Starts sshd with a node key allowed to listen on two fresh ports and to reach `echo_port`.
    pub(super) fn start(name: &str, echo_port: u16) -> Sshd {
        Sshd::start_with(name, echo_port, "")
    }

    /// As `start`, with extra sshd_config lines.
    pub(super) fn start_with(name: &str, echo_port: u16, extra_config: &str) -> Sshd {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "burrow-tunnel-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let host = Identity::generate("test-host");
        host.save(&dir.join("host_key")).expect("host key");
        let node = Identity::generate("test-node");
        let listen_ports = [free_port(), free_port()];
        fs::write(
            dir.join("authorized_keys"),
            format!(
                "restrict,port-forwarding,command=\"/bin/false\",permitlisten=\"127.0.0.1:{}\",\
                 permitlisten=\"127.0.0.1:{}\",permitopen=\"127.0.0.1:{echo_port}\" {}\n",
                listen_ports[0],
                listen_ports[1],
                node.public_line()
            ),
        )
        .expect("authorized_keys");
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nGatewayPorts no\n\
                 PermitTTY no\nX11Forwarding no\nPermitRootLogin prohibit-password\n{extra_config}",
                dir.join("host_key").display(),
                dir.join("authorized_keys").display()
            ),
        )
        .expect("sshd_config");
        let log = fs::File::create(dir.join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/sshd");
        let sshd = Sshd {
            child,
            port,
            dir,
            host_fingerprint: host.public().fingerprint(),
            node,
            listen_ports,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "sshd did not come up; log:\n{}", sshd.log());
        sshd
    }

    pub(super) fn config(&self) -> TunnelConfig {
        TunnelConfig {
            addr: format!("127.0.0.1:{}", self.port),
            user: "root".into(),
            host_key_pin: self.host_fingerprint.clone(),
            private_key_pem: self.node.to_openssh_pem(),
            public_key_line: self.node.public_line(),
            listen_ports: self.listen_ports.to_vec(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    pub(super) fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Every process sshd forked (per-connection monitors and their session children).
    fn descendants(&self) -> Vec<i32> {
        let mut parents = vec![self.child.id() as i32];
        let mut found = Vec::new();
        while let Some(parent) = parents.pop() {
            for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                // "pid (comm) state ppid ...": comm may contain spaces, so split after the ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<i32>().ok());
                if ppid == Some(parent) && !found.contains(&pid) {
                    found.push(pid);
                    parents.push(pid);
                }
            }
        }
        found
    }

    pub(super) fn signal_sessions(&self, signal: Signal) {
        for pid in self.descendants() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, signal);
            }
        }
    }

    pub(super) fn kill_all(&mut self) {
        self.signal_sessions(Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
        if thread::panicking() {
            eprintln!("sshd log ({}):\n{}", self.dir.display(), self.log());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain TCP echo server on 127.0.0.1 (the direct-tcpip target).
pub(super) fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let port = listener.local_addr().expect("echo addr").port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = conn.try_clone().expect("clone");
                let mut writer = conn;
                let _ = io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// The agent side of forwarded connections: echoes every stream until EOF, then closes its side.
pub(super) fn serve_echo(incoming: Receiver<Stream>) -> JoinHandle<()> {
    thread::spawn(move || {
        for stream in incoming.iter() {
            thread::spawn(move || {
                let (mut reader, mut writer) = stream.split();
                let _ = io::copy(&mut reader, &mut writer);
                writer.close();
            });
        }
    })
}

/// Sends `data` and reads back as many bytes concurrently; returns what came back.
pub(super) fn round_trip<S: Write + Send + 'static>(
    mut conn: S,
    data: Arc<Vec<u8>>,
    finish: impl FnOnce(&mut S) + Send + 'static,
    mut read_half: impl Read,
) -> Vec<u8> {
    let writer = thread::spawn(move || {
        conn.write_all(&data).expect("write");
        finish(&mut conn);
        conn
    });
    let mut back = Vec::new();
    read_half.read_to_end(&mut back).expect("read back");
    drop(writer.join().expect("writer thread"));
    back
}

/// One TCP connection through the reverse forward: send `data`, read the echo to EOF.
pub(super) fn echo_via_forward(port: u16, data: Arc<Vec<u8>>) -> Vec<u8> {
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to forwarded port");
    let reader = conn.try_clone().expect("clone");
    round_trip(
        conn,
        data,
        |c| c.shutdown(Shutdown::Write).expect("shutdown"),
        reader,
    )
}

pub(super) fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}
