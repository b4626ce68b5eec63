//! The CLI's HTTP/1.1 client over the gateway's Unix socket (`api.sock` in the data dir). The
//! socket is the CLI's only way to the gateway: no token travels, the gateway knows the caller by
//! `SO_PEERCRED`, and a process squatting the TCP port while the gateway is down never hears from
//! the CLI. One request per connection (`Connection: close`); bodies framed by `Content-Length`,
//! chunked (the NDJSON of `exec`), or the end of the stream. Request bodies are sent whole
//! ([`request`]) or streamed as they are written ([`Upload`]: files and stdin of any size).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};

/// Largest response head accepted from the gateway.
const MAX_HEAD: usize = 64 * 1024;

/// A response whose body has not been read yet.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    headers: Vec<(String, String)>,
    body: Box<dyn Read + Send>,
}

impl Response {
    /// The first header called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body, as it arrives (for streams).
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        self.body
    }

    /// The whole body as text (for JSON answers, which are small).
    pub fn into_string(mut self) -> anyhow::Result<String> {
        let mut text = String::new();
        self.body
            .read_to_string(&mut text)
            .context("reading the gateway's answer")?;
        Ok(text)
    }
}

/// Sends one request to the gateway listening on `socket` and reads the response head. If the
/// gateway answers before taking the whole body (a refusal) and hangs up, that answer is returned.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let length = body.len().to_string();
    let mut all = headers.to_vec();
    all.push(("Content-Length", &length));
    let mut stream = send_head(socket, method, path, &all, "close")?;
    let sent = stream.write_all(body);
    match (sent, read_response(BufReader::new(stream))) {
        (_, Ok(response)) => Ok(response),
        (Err(e), Err(_)) => {
            Err(e).with_context(|| format!("sending {method} {path} to the gateway"))
        }
        (Ok(()), Err(e)) => Err(e),
    }
}

/// Connects and sends the request line and headers (plus `Host` and `Connection`).
fn send_head(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    connection: &str,
) -> anyhow::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket).map_err(|e| not_reachable(socket, e))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: {connection}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .with_context(|| format!("sending {method} {path} to the gateway"))?;
    Ok(stream)
}

/// A request whose body is written as it comes (a file, the CLI's stdin): with a known length
/// as `Content-Length`, else chunked, each `write` one chunk. [`Upload::finish`] ends the body and
/// reads the answer. Memory stays bounded whatever the size: nothing is kept.
pub struct Upload {
    stream: UnixStream,
    /// Bytes still to send under `Content-Length`; `None`: chunked.
    remaining: Option<u64>,
    what: String,
}

impl Upload {
    /// Connects and sends the head of `method path`; the body follows through `Write`.
    pub fn start(
        socket: &Path,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        length: Option<u64>,
    ) -> anyhow::Result<Upload> {
        let framing = length.map(|n| n.to_string());
        let mut all = headers.to_vec();
        match &framing {
            Some(n) => all.push(("Content-Length", n)),
            None => all.push(("Transfer-Encoding", "chunked")),
        }
        Ok(Upload {
            stream: send_head(socket, method, path, &all, "close")?,
            remaining: length,
            what: format!("{method} {path}"),
        })
    }

    /// A second handle on the connection: `shutdown(Both)` on it wakes a thread blocked in
    /// writing this upload (the write fails), which is how its owner stops it.
    pub fn closer(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// Ends the body and reads the gateway's answer. If sending failed because the gateway
    /// answered early (an error before reading the whole body) that answer is returned.
    pub fn finish(mut self) -> anyhow::Result<Response> {
        let ended = match self.remaining {
            None => self.stream.write_all(b"0\r\n\r\n"),
            Some(0) => Ok(()),
            Some(n) => Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("{n} bytes short of the announced length"),
            )),
        };
        let what = std::mem::take(&mut self.what);
        match (ended, read_response(BufReader::new(self.stream))) {
            (_, Ok(response)) => Ok(response),
            (Err(e), Err(_)) => Err(e).with_context(|| format!("sending {what} to the gateway")),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    /// Whether the gateway already answered (it does so early only to refuse): then the rest of
    /// the body need not be sent, and [`Upload::finish`] returns that answer.
    pub fn answered(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.stream, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.remaining {
            None => {
                self.stream
                    .write_all(format!("{:x}\r\n", buf.len()).as_bytes())?;
                self.stream.write_all(buf)?;
                self.stream.write_all(b"\r\n")?;
                Ok(buf.len())
            }
            Some(remaining) => {
                if buf.len() as u64 > *remaining {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidInput,
                        "more bytes than the announced length (the file grew while sent)",
                    ));
                }
                self.stream.write_all(buf)?;
                *remaining -= buf.len() as u64;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// What an upgrade request got: the stream's two halves (the read half keeps what came after the
/// `101` head), or the gateway's refusal.
pub enum Upgraded {
    Stream {
        read: Box<dyn Read + Send>,
        write: UnixStream,
    },
    Refused(Response),
}

/// Sends `POST path` asking to switch to `protocol` (`Connection: Upgrade`).
pub fn upgrade(socket: &Path, path: &str, protocol: &str) -> anyhow::Result<Upgraded> {
    let stream = send_head(
        socket,
        "POST",
        path,
        &[("Upgrade", protocol), ("Content-Length", "0")],
        "Upgrade",
    )?;
    let write = stream
        .try_clone()
        .context("duplicating the gateway connection")?;
    let response = read_response(BufReader::new(stream))?;
    if response.status == 101 {
        Ok(Upgraded::Stream {
            read: response.into_reader(),
            write,
        })
    } else {
        Ok(Upgraded::Refused(response))
    }
}

fn not_reachable(socket: &Path, e: std::io::Error) -> anyhow::Error {
    let dir = socket.parent().unwrap_or(socket);
    let why = match e.kind() {
        ErrorKind::NotFound if !dir.exists() => format!("there is no data dir {}", dir.display()),
        ErrorKind::NotFound => format!("no socket at {}", socket.display()),
        ErrorKind::ConnectionRefused => format!("{} is stale: nothing answers", socket.display()),
        ErrorKind::PermissionDenied => {
            return anyhow::anyhow!(
                "permission denied on {}: run this as the gateway's user (or root)",
                socket.display()
            )
        }
        _ => format!("{}: {e}", socket.display()),
    };
    anyhow::anyhow!(
        "the gateway does not seem to be running ({why}); start it with `gateway serve --data-dir {}`, \
         or pass the --data-dir it runs with",
        dir.display()
    )
}

fn read_response<R: BufRead + Send + 'static>(mut reader: R) -> anyhow::Result<Response> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let line_start = head.len();
        let n = (&mut reader)
            .take((MAX_HEAD - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .context("reading the gateway's answer")?;
        if n == 0 {
            bail!("the gateway closed the connection without answering");
        }
        if head.len() >= MAX_HEAD && !head[line_start..].ends_with(b"\n") {
            bail!("the gateway's answer has a head over {MAX_HEAD} bytes");
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&head)
        .context("the gateway's answer is not HTTP")?;
    let status = parsed.code.context("the gateway's answer has no status")?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let body: Box<dyn Read + Send> = if status == 101 {
        // Switched protocols: what follows is the new protocol's stream, not a body.
        Box::new(reader)
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Box::new(chunked_transfer::Decoder::new(reader))
    } else if let Some(length) = header("content-length") {
        let length: u64 = length
            .parse()
            .with_context(|| format!("the gateway sent Content-Length {length:?}"))?;
        Box::new(reader.take(length))
    } else {
        Box::new(reader)
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::net::UnixListener;

    /// A response as `read_response` would make it, for the CLI's own tests.
    pub(crate) fn response(
        status: u16,
        headers: &[(&str, &str)],
        body: Box<dyn Read + Send>,
    ) -> Response {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        Response {
            status,
            headers,
            body,
        }
    }

    /// A one-request server on a socket in a temp dir: `serve` gets the raw request and returns
    /// the raw response; the request comes back from the thread's join.
    fn server(
        serve: impl FnOnce(&mut UnixStream) -> Vec<u8> + Send + 'static,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<Vec<u8>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                serve(&mut conn)
            })
            .unwrap();
        (dir, path, thread)
    }

    /// Reads a request up to the end of a chunked body (`0\r\n\r\n`).
    fn read_chunked_request(conn: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "the client hung up early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn an_upload_without_a_length_is_chunked_one_chunk_per_write() {
        let (_dir, path, thread) = server(|conn| {
            let got = read_chunked_request(conn);
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nX-Burrow-Job: j-7\r\nContent-Length: 12\r\n\r\n{\"bytes\": 8}",
            )
            .unwrap();
            got
        });
        let mut up = Upload::start(
            &path,
            "PUT",
            "/api/v1/jobs/j-7/stdin",
            &[("Accept", "application/json")],
            None,
        )
        .unwrap();
        up.write_all(b"hello").unwrap();
        up.write_all(b"").unwrap();
        up.write_all(b"\n\xff\x00").unwrap();
        let response = up.finish().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("X-BURROW-JOB"), Some("j-7"));
        assert_eq!(response.into_string().unwrap(), "{\"bytes\": 8}");
        let request = thread.join().unwrap();
        let text = String::from_utf8_lossy(&request);
        assert!(
            text.starts_with("PUT /api/v1/jobs/j-7/stdin HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nTransfer-Encoding: chunked\r\n"),
            "{text}"
        );
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(
            request.ends_with(b"\r\n\r\n5\r\nhello\r\n3\r\n\n\xff\x00\r\n0\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn an_upload_with_a_length_sends_exactly_that_many_bytes() {
        let (_dir, path, thread) = server(|conn| {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"abcdef") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
            got
        });
        let mut up = Upload::start(&path, "PUT", "/f", &[], Some(6)).unwrap();
        up.write_all(b"abc").unwrap();
        assert!(up.write_all(b"defg").is_err(), "more than announced");
        up.write_all(b"def").unwrap();
        assert_eq!(up.finish().unwrap().status, 200);
        let text = String::from_utf8(thread.join().unwrap()).unwrap();
        assert!(text.contains("\r\nContent-Length: 6\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabcdef"), "{text}");
    }

    /// The gateway refuses a body before reading it (a bad path, an unknown node) and hangs up:
    /// the client learns why instead of a broken pipe.
    #[test]
    fn an_early_refusal_is_the_answer_not_a_broken_pipe() {
        let (_dir, path, thread) = server(|conn| {
            let mut head = [0u8; 64];
            let _ = conn.read(&mut head).unwrap();
            conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 41\r\n\r\n{\"error\":\"path is relative\",\"code\":\"bad\"}")
                .unwrap();
            Vec::new()
        });
        let mut up = Upload::start(&path, "PUT", "/f", &[], Some(64 << 20)).unwrap();
        thread.join().unwrap();
        assert!(up.answered());
        let piece = vec![0u8; 1 << 20];
        // Writes fail once the server is gone (its socket buffer is far smaller than 64 MiB).
        let failed = (0..64).any(|_| up.write_all(&piece).is_err());
        assert!(failed);
        let response = up.finish().unwrap();
        assert_eq!(response.status, 400);
        assert!(response.into_string().unwrap().contains("path is relative"));
    }

    fn parse(raw: &'static [u8]) -> (u16, String) {
        let r = read_response(BufReader::new(Cursor::new(raw))).unwrap();
        (r.status, r.into_string().unwrap())
    }

    #[test]
    fn reads_length_chunked_and_unframed_bodies() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokTRAILING"),
            (200, "ok".into())
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n"),
            (200, "{}\n".into())
        );
        assert_eq!(
            parse(b"HTTP/1.1 404 Not Found\r\n\r\nno"),
            (404, "no".into())
        );
    }

    #[test]
    fn an_endless_head_is_an_error_not_a_hang() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        raw.resize(MAX_HEAD * 2, b'a');
        assert!(read_response(BufReader::new(Cursor::new(raw))).is_err());
    }

    #[test]
    fn a_missing_socket_says_the_gateway_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(&dir.path().join("api.sock"), "GET", "/healthz", &[], b"")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("does not seem to be running"),
            "{err:#}"
        );
    }
}
