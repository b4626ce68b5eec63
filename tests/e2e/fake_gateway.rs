//! A fake gateway for the CLI's contract tests (`cli_contract.rs`): a Unix socket in a 0700 data
//! dir, as `gateway serve` makes it, whose handler answers like the jobs API of issue 7 would. Each
//! connection is parsed (head, query, Content-Length or chunked body) and served on its own named
//! thread; every thread is joined when the fake is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use crate::util::{bin, isolate};

/// A request as the fake received it (its body only where the handler read it whole).
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        let mut found = self.headers.iter().filter(|(n, _)| *n == name);
        found.next().map(|(_, v)| v.as_str())
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        let mut found = self.query.iter().filter(|(k, _)| k == key);
        found.next().map(|(_, v)| v.as_str())
    }

    /// `METHOD /path` (no query): what handlers match on.
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// One connection of the fake: the parsed head, then the body and the answer.
pub struct Conn {
    pub head: Head,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn accept(stream: UnixStream) -> Option<Conn> {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':')?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Some(Conn {
            head: Head {
                method,
                path: path.to_string(),
                query,
                headers,
            },
            reader,
            writer: stream,
        })
    }

    /// Reads the body piece by piece (Content-Length or chunked), calling `each` per piece;
    /// returns the byte count.
    pub fn body_pieces(&mut self, mut each: impl FnMut(&[u8])) -> u64 {
        let mut total = 0u64;
        if let Some(length) = self.head.header("content-length") {
            let mut left: u64 = length.parse().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = self.reader.read(&mut buf[..want]).unwrap();
                assert!(
                    n > 0,
                    "the CLI hung up {left} bytes before the end of its body"
                );
                each(&buf[..n]);
                left -= n as u64;
                total += n as u64;
            }
            return total;
        }
        assert_eq!(self.head.header("transfer-encoding"), Some("chunked"));
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size];
            self.reader.read_exact(&mut chunk).unwrap();
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).unwrap();
            assert_eq!(&crlf, b"\r\n");
            if size == 0 {
                return total;
            }
            each(&chunk);
            total += size as u64;
        }
    }

    pub fn body(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        self.body_pieces(|p| all.extend_from_slice(p));
        all
    }

    pub fn json_body(&mut self) -> Value {
        serde_json::from_slice(&self.body()).unwrap()
    }

    pub fn reply(&mut self, status: u16, body: &Value) {
        let body = body.to_string();
        let _ = write!(
            self.writer,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }

    /// Starts a chunked answer with these extra header lines.
    pub fn start_chunked(&mut self, content_type: &str, extra: &str) {
        let _ = write!(
            self.writer,
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
        );
    }

    pub fn chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        write!(self.writer, "{:x}\r\n", data.len())?;
        self.writer.write_all(data)?;
        self.writer.write_all(b"\r\n")
    }

    pub fn event(&mut self, event: &Value) -> std::io::Result<()> {
        self.chunk(format!("{event}\n").as_bytes())
    }

    pub fn end_chunked(&mut self) {
        let _ = self.writer.write_all(b"0\r\n\r\n");
    }

    pub fn raw(&mut self) -> &mut UnixStream {
        &mut self.writer
    }
}

type Handler = dyn Fn(Conn) + Send + Sync;

/// A fake gateway serving `handler` on `<data>/api.sock`, each connection on its own thread;
/// stops (and joins every thread) on drop. Every request's route is recorded.
pub struct Fake {
    pub dir: tempfile::TempDir,
    pub seen: Arc<Mutex<Vec<Head>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Fake {
    pub fn start(handler: impl Fn(Conn) + Send + Sync + 'static) -> Fake {
        let dir = tempfile::Builder::new()
            .prefix("burrow-fake")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let listener = UnixListener::bind(data.join("api.sock")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        let acceptor = std::thread::Builder::new()
            .name("fake-gateway".into())
            .spawn(move || {
                let mut workers = Vec::new();
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let Some(conn) = Conn::accept(stream) else {
                        continue;
                    };
                    seen2.lock().unwrap().push(conn.head.clone());
                    let handler = Arc::clone(&handler);
                    workers.push(
                        std::thread::Builder::new()
                            .name("fake-request".into())
                            .spawn(move || handler(conn))
                            .unwrap(),
                    );
                }
                for w in workers {
                    w.join().expect("a fake handler panicked (see above)");
                }
            })
            .unwrap();
        Fake {
            dir,
            seen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `gateway --data-dir <fake> ARGS…`, stdio as given by the caller.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("gateway"));
        isolate(&mut cmd)
            .arg("--data-dir")
            .arg(self.data())
            .args(args);
        cmd
    }

    /// Runs the CLI with `input` on stdin (None: /dev/null); returns stdout, stderr, exit code.
    pub fn run(&self, args: &[&str], input: Option<Vec<u8>>) -> (Vec<u8>, String, i32) {
        let mut cmd = self.cli(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().unwrap();
        let feeder = input.map(|bytes| {
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                // The CLI may stop reading (a refusal): a broken pipe is its business.
                let _ = stdin.write_all(&bytes);
            })
        });
        let out = child.wait_with_output().unwrap();
        if let Some(f) = feeder {
            f.join().unwrap();
        }
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    pub fn routes(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(Head::route).collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = UnixStream::connect(self.data().join("api.sock"));
        if let Some(a) = self.acceptor.take() {
            let joined = a.join();
            if !std::thread::panicking() {
                joined.unwrap();
            }
        }
    }
}

pub fn summary(counts: &[(&str, u64)]) -> Value {
    let mut s = serde_json::Map::new();
    for state in [
        "queued",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "offline",
        "refused",
        "lost",
        "expired",
        "unknown",
    ] {
        s.insert(state.into(), json!(0));
    }
    for (state, n) in counts {
        s.insert((*state).into(), json!(n));
    }
    Value::Object(s)
}

/// Deterministic bytes that are not UTF-8 (xorshift).
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 hex of a byte stream fed piece by piece (coreutils' sha256sum: no hashing crate in
/// the test crate).
pub struct Sha {
    child: Child,
}

impl Sha {
    pub fn new() -> Sha {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Sha { child }
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }
    pub fn hex(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }
}

/// Peak resident memory (VmHWM, KiB) of a process.
pub fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
