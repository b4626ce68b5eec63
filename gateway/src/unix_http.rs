//! The CLI's HTTP/1.1 client over the gateway's Unix socket (`api.sock` in the data dir). The
//! socket is the CLI's only way to the gateway: no token travels, the gateway knows the caller by
//! `SO_PEERCRED`, and a process squatting the TCP port while the gateway is down never hears from
//! the CLI. One request per connection (`Connection: close`); bodies framed by `Content-Length`,
//! chunked (the NDJSON of `exec`), or the end of the stream.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};

/// Largest response head accepted from the gateway.
const MAX_HEAD: usize = 64 * 1024;

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    body: Box<dyn Read + Send>,
}

impl Response {
    /// The body, as it arrives (for streams).
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        self.body
    }

    pub fn into_string(mut self) -> anyhow::Result<String> {
        let mut text = String::new();
        self.body
            .read_to_string(&mut text)
            .context("reading the gateway's answer")?;
        Ok(text)
    }
}

/// Sends one request to the gateway listening on `socket` and reads the response head.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| not_reachable(socket, e))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .with_context(|| format!("sending {method} {path} to the gateway"))?;
    read_response(BufReader::new(stream))
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
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let body: Box<dyn Read + Send> =
        if header("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
            Box::new(chunked_transfer::Decoder::new(reader))
        } else if let Some(length) = header("Content-Length") {
            let length: u64 = length
                .parse()
                .with_context(|| format!("the gateway sent Content-Length {length:?}"))?;
            Box::new(reader.take(length))
        } else {
            Box::new(reader)
        };
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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
