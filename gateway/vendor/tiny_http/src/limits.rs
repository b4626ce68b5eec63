//! PATCH(limits): what one client may make the server hold — bytes, time, threads — and the short
//! answer it gets when it asks for more. Upstream 0.12.0 had no such bounds (see PATCHES.md).

use std::io::Write;
use std::time::Duration;

/// Bounds applied to every connection of a [`Server`](crate::Server).
///
/// Build one with [`Limits::default()`] and change the fields you need; the defaults are meant to
/// be safe for a server reachable by untrusted clients.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request head (request line, headers and their line ends) in bytes; more is
    /// answered `431 Request Header Fields Too Large` and the connection closed. Default 64 KiB.
    pub max_head_bytes: usize,
    /// Most header lines in one request; more is answered 431. Default 100.
    pub max_headers: usize,
    /// Time from starting to wait for a request (connection accepted, or previous request handed
    /// over) until its head is complete; then `408` and close (silently if nothing was sent, as for
    /// an idle keep-alive connection). `None`: wait forever (upstream behaviour). Default 10 s.
    pub head_timeout: Option<Duration>,
    /// How long one read of a request body may wait for data (inactivity, not a total, so long
    /// uploads keep working); the reader then fails with `TimedOut`. Writing responses is never
    /// timed out, so long streamed answers keep working. `None`: wait forever. Default 30 s.
    pub body_idle_timeout: Option<Duration>,
    /// Largest `Content-Length` (and largest chunked body buffered under
    /// [`buffer_body_up_to`](Self::buffer_body_up_to)) accepted; more is answered
    /// `413 Payload Too Large` before any of it is read. Default `None` (no limit).
    pub max_body_bytes: Option<u64>,
    /// Bodies up to this size are read in full by the connection's own thread before the request
    /// is handed to [`Server::recv`](crate::Server::recv), so a client that stops half way holds no
    /// worker. Memory grows with the bytes received, never with the length announced. Default 1024
    /// (upstream's fixed threshold).
    pub buffer_body_up_to: usize,
    /// An unread body is drained (through a fixed 8 KiB buffer) up to this many bytes so the
    /// connection can be kept alive; a larger remainder closes the connection instead. Default 64 KiB.
    pub drain_limit: usize,
    /// Most connections served at once (one thread each); the next one is answered `503` and
    /// closed at once. Default 256.
    pub max_connections: usize,
    /// PATCH(streamed-bodies): requests whose path this accepts (`Some`) are interactive streams:
    /// their body is never buffered (each chunk reaches the handler as it comes) and a read of it
    /// never times out (a terminal's keystrokes may pause for hours). Default `None`.
    pub streamed_body: Option<fn(&str) -> bool>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            head_timeout: Some(Duration::from_secs(10)),
            body_idle_timeout: Some(Duration::from_secs(30)),
            max_body_bytes: None,
            buffer_body_up_to: 1024,
            drain_limit: 64 * 1024,
            max_connections: 256,
            streamed_body: None,
        }
    }
}

impl Limits {
    /// A zero duration cannot be a socket timeout; it means "no timeout" here.
    pub(crate) fn head_timeout(&self) -> Option<Duration> {
        self.head_timeout.filter(|t| !t.is_zero())
    }

    pub(crate) fn body_idle_timeout(&self) -> Option<Duration> {
        self.body_idle_timeout.filter(|t| !t.is_zero())
    }
}

/// Writes a complete, self-delimited answer that ends the connection (`Connection: close`), for
/// requests refused before a [`Request`](crate::Request) exists.
pub(crate) fn write_refusal<W: Write>(
    mut writer: W,
    status: u16,
    text: &str,
) -> std::io::Result<()> {
    let reason = crate::StatusCode(status).default_reason_phrase();
    write!(
        writer,
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len()
    )?;
    writer.flush()
}

/// Answers 503 on a non-blocking socket the server will not serve. What the client has already
/// sent is read away first, and our side is shut before the close, so the kernel does not answer
/// with a reset that could make the client lose the 503.
pub(crate) fn refuse_connection(mut sock: crate::connection::Connection) {
    use std::io::Read;
    let mut sink = [0u8; 4096];
    while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
    write_refusal(&mut sock, 503, "too many connections").ok();
    sock.shutdown(std::net::Shutdown::Write).ok();
}
