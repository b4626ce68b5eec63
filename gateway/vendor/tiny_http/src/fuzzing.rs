//! PATCH(fuzzing) (feature `fuzzing`; always built for this crate's own tests): one client
//! connection's requests read from bytes in memory, through the same `ClientConnection` parser the
//! server runs on each accepted socket, so a fuzz target can feed it arbitrary input without a
//! listener, an accept thread or a worker pool.
//!
//! The bytes go through a real socket pair (the parser reads a `RefinedTcpStream`, timeouts and
//! all), written in full and then shut down before the first request is read, so no read ever
//! waits: the call is bounded by the input. Everything is done on the calling thread.

use std::io::{ErrorKind, Read, Result as IoResult, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::client::ClientConnection;
use crate::connection::Connection;
use crate::util::RefinedTcpStream;
use crate::{Limits, Request};

/// The most input [`serve_bytes`] sends: it must fit the socket's buffer, since nothing reads it
/// while it is written. Longer input is cut here.
pub const MAX_INPUT: usize = 64 << 10;

/// What one connection did with its input.
#[derive(Debug)]
pub struct Served {
    /// Requests the parser produced (each was given to the handler).
    pub requests: usize,
    /// Every byte the server wrote back: answers, `100 Continue`s, refusals.
    pub output: Vec<u8>,
    /// The server closed the connection with input still unread, so the socket reported a reset
    /// (as TCP would send one); `output` holds what was read before it.
    pub reset: bool,
}

/// Serves `input` (at most [`MAX_INPUT`] bytes) as everything one client sent on a connection
/// before closing its side: each request the parser reads is handed to `handle`, which answers it
/// (or drops it: a 500, as in a server). Returns when the parser stops reading requests.
///
/// Fails on an I/O error of the socket pair itself, and when the parser yields more requests than
/// the input has bytes (it would loop).
pub fn serve_bytes(
    input: &[u8],
    limits: Limits,
    mut handle: impl FnMut(Request),
) -> IoResult<Served> {
    let input = &input[..input.len().min(MAX_INPUT)];
    let (mut client, server) = UnixStream::pair()?;
    client.set_nonblocking(true)?;
    client.write_all(input)?;
    client.shutdown(Shutdown::Write)?;

    let (read, write) = RefinedTcpStream::new(Connection::from(server))?;
    let mut connection = ClientConnection::new(write, read, limits);
    let mut served = Served {
        requests: 0,
        output: Vec::new(),
        reset: false,
    };
    for request in connection.by_ref() {
        served.requests += 1;
        if served.requests > input.len() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "the parser yields more requests than the input has bytes",
            ));
        }
        handle(request);
        // Answers are taken as they come, so a long pipelined input never fills the socket.
        if drain(&mut client, &mut served.output)? {
            served.reset = true;
        }
    }
    // Dropping the connection shuts its write half: the rest of the output ends in EOF.
    drop(connection);
    client.set_nonblocking(false)?;
    if !served.reset {
        match client.read_to_end(&mut served.output) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => served.reset = true,
            other => {
                other?;
            }
        }
    }
    Ok(served)
}

/// Reads what the server wrote so far, without waiting; true if the socket reported a reset.
fn drain(client: &mut UnixStream, output: &mut Vec<u8>) -> IoResult<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => output.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Response;

    /// Reads each body whole and answers with its length.
    fn echo_lengths(input: &[u8]) -> (Served, Vec<(String, Vec<u8>)>) {
        let mut seen = Vec::new();
        let served = serve_bytes(input, Limits::default(), |mut rq| {
            let mut body = Vec::new();
            rq.as_reader().read_to_end(&mut body).unwrap();
            seen.push((rq.url().to_string(), body.clone()));
            rq.respond(Response::from_string(body.len().to_string()))
                .unwrap();
        })
        .unwrap();
        (served, seen)
    }

    #[test]
    fn pipelined_requests_with_fixed_and_chunked_bodies_are_read_from_bytes() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (served, seen) = echo_lengths(input);
        assert_eq!(served.requests, 3);
        assert_eq!(
            seen,
            vec![
                ("/a".into(), vec![]),
                ("/b".into(), b"hello".to_vec()),
                ("/c".into(), b"abcde".to_vec()),
            ]
        );
        let text = String::from_utf8_lossy(&served.output);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{}", text);
    }

    #[test]
    fn a_bad_request_line_is_answered_400_and_ends_the_connection() {
        let (served, seen) =
            echo_lengths(b"GET /a HTTP/1.1\r\n\r\nnonsense\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        assert_eq!(seen.len(), 1);
        assert_eq!(served.requests, 1);
        let text = String::from_utf8_lossy(&served.output);
        assert!(text.contains("HTTP/1.1 200"), "{}", text);
        assert!(text.contains("HTTP/1.1 400"), "{}", text);
    }

    /// Found by core/fuzz's `http` target: the server closes with input unread (here after
    /// `Connection: close`), the socket pair reports a reset, and `serve_bytes` failed with it
    /// instead of returning what was served.
    #[test]
    fn input_left_unread_at_close_is_a_reset_not_an_error() {
        // More than the connection's 1 KiB read buffer takes, so some stays in the socket.
        let mut input = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
        input.extend_from_slice(&b"GET /never HTTP/1.1\r\n\r\n".repeat(400));
        let (served, seen) = echo_lengths(&input);
        assert_eq!(seen.len(), 1);
        assert!(served.reset);
        assert!(served.output.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn input_beyond_the_cap_is_not_served() {
        let one = b"GET / HTTP/1.1\r\n\r\n";
        let input = one.repeat(MAX_INPUT / one.len() + 100);
        let (served, _) = echo_lengths(&input);
        // The last request is cut by the cap: the parser sees an unexpected EOF.
        assert_eq!(served.requests, MAX_INPUT / one.len());
    }
}
