use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::common::{HTTPVersion, Method};
use crate::limits::{write_refusal, Limits};
use crate::util::refined_tcp_stream::ReadLimit;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // PATCH(peer-credentials): the Unix-socket peer, read once at accept.
    peer_credentials: Option<crate::PeerCredentials>,

    // PATCH(limits): the server's bounds, bytes of the head being read so far, and the flag an
    // unread body raises when the stream can no longer be trusted to start at a request.
    limits: Limits,
    head_bytes: usize,
    close_connection: Arc<AtomicBool>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// PATCH(limits): the head is over `max_head_bytes` or `max_headers` (431)
    HeadTooLarge,
    /// PATCH(http2-deadlock): a well-formed `HTTP/x.y` this server does not speak (505)
    UnsupportedVersion,
    /// PATCH(content-length): unparsable or conflicting `Content-Length` (400)
    BadContentLength,
    /// PATCH(content-length): `Content-Length` over `max_body_bytes` (413)
    BodyTooLarge,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let peer_credentials = read_socket.peer_credentials();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            peer_credentials,
            limits,
            head_bytes: 0,
            close_connection: Arc::new(AtomicBool::new(false)),
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    fn read_next_line(&mut self) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            // PATCH(limits): upstream grew `buf` for as long as the client sent bytes without a
            // line end (256 MiB of header cost 275 MB of memory).
            if self.head_bytes >= self.limits.max_head_bytes {
                return Err(ReadError::HeadTooLarge);
            }
            #[allow(clippy::unbuffered_bytes)] // upstream code; the source is a BufReader
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(ReadError::ReadIoError)?,
                None => {
                    return Err(ReadError::ReadIoError(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };
            self.head_bytes += 1;

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf).map_err(|_| {
                    ReadError::ReadIoError(IoError::new(
                        ErrorKind::InvalidInput,
                        "Header is not in ASCII",
                    ))
                });
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // PATCH(read-timeouts): once the previous request has handed the stream over, the head
        // must arrive within `head_timeout`.
        self.head_bytes = 0;
        let head_timeout = self.limits.head_timeout();
        let close_connection = self.close_connection.clone();
        let stream_usable = self
            .next_header_source
            .with_inner(|r| {
                r.get_mut().set_read_limit(match head_timeout {
                    Some(t) => ReadLimit::Deadline(Instant::now() + t),
                    None => ReadLimit::None,
                });
                // PATCH(unread-body): the previous body was left unread and not drained (it was
                // too large, or failed): the next bytes are not a request head.
                !close_connection.load(Ordering::Acquire)
            })
            .map_err(ReadError::ReadIoError)?;
        if !stream_usable {
            return Err(ReadError::ReadIoError(IoError::new(
                ErrorKind::ConnectionAborted,
                "previous request body left unread",
            )));
        }

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line()?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line()?;

                    if line.is_empty() {
                        break;
                    };
                    // PATCH(limits): a bounded number of header lines.
                    if headers.len() >= self.limits.max_headers {
                        return Err(ReadError::HeadTooLarge);
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // PATCH(read-timeouts): from here on the stream carries this request's body.
        // PATCH(upgrade-split): unless it asks for an upgrade: what follows is then a stream of
        // its own, quiet for as long as its user is (a shell, an ssh session), not a body.
        let upgrade = headers.iter().any(|h: &crate::Header| {
            h.field.equiv("Connection") && h.value.as_str().to_ascii_lowercase().contains("upgrade")
        });
        // PATCH(streamed-bodies): an interactive stream is neither timed out nor buffered.
        let streamed = self.limits.streamed_body.is_some_and(|f| f(&path));
        let body_timeout = self
            .limits
            .body_idle_timeout()
            .filter(|_| !upgrade && !streamed);
        data_source
            .with_inner(|r| {
                r.get_mut()
                    .set_read_limit(body_timeout.map_or(ReadLimit::None, ReadLimit::Idle))
            })
            .map_err(ReadError::ReadIoError)?;

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            // PATCH(no-panic): was `*self.remote_addr.as_ref().unwrap()`: `peer_addr` fails
            // (ENOTCONN) when the client has already gone, and the connection thread panicked.
            self.remote_addr.as_ref().ok().copied().flatten(),
            data_source,
            writer,
            &crate::body::BodyLimits {
                max_body_bytes: self.limits.max_body_bytes,
                buffer_body_up_to: if streamed {
                    0
                } else {
                    self.limits.buffer_body_up_to
                },
                drain_limit: self.limits.drain_limit,
                close_connection: self.close_connection.clone(),
            },
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::BadContentLength => ReadError::BadContentLength,
                request::RequestCreationError::BodyTooLarge => ReadError::BodyTooLarge,
            }
        })?;

        // return the request
        Ok(request.with_peer_credentials(self.peer_credentials))
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests || self.close_connection.load(Ordering::Acquire) {
            return None;
        }

        // PATCH(http2-deadlock): the loop's only `continue` (the deadlocking 505) is gone; the loop
        // stays so the diff stays small.
        #[allow(clippy::never_loop)]
        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                // PATCH(read-timeouts): nothing of a next request arrived (an idle keep-alive
                // connection, or a client waiting on a long streamed answer): close quietly. A
                // 408 would queue behind that answer and be written after it.
                Err(ReadError::ReadIoError(ref err))
                    if err.kind() == ErrorKind::TimedOut && self.head_bytes == 0 =>
                {
                    return None
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                // PATCH(limits, content-length, http2-deadlock): refused before a `Request`
                // exists; we cannot know where a next request would start, so close.
                Err(ReadError::HeadTooLarge) => {
                    self.refuse(431, "request head too large");
                    return None;
                }
                Err(ReadError::BadContentLength) => {
                    self.refuse(400, "invalid Content-Length");
                    return None;
                }
                Err(ReadError::BodyTooLarge) => {
                    self.refuse(413, "request body too large");
                    return None;
                }
                // PATCH(http2-deadlock): upstream built the `Request` first and then wrote the 505
                // through a second writer that waits for that request's writer to finish, which the
                // request still held: the thread blocked forever with both socket fds.
                Err(ReadError::UnsupportedVersion) => {
                    self.refuse(505, "This server only supports HTTP versions 1.0 and 1.1");
                    return None;
                }

                Ok(rq) => rq,
            };

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

impl ClientConnection {
    /// PATCH(limits): answers a request refused before it became a `Request`. The writer waits
    /// for earlier (pipelined) answers on this connection, so the order stays right.
    fn refuse(&mut self, status: u16, text: &str) {
        if let Some(writer) = self.sink.next() {
            write_refusal(writer, status, text).ok();
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        // PATCH(http09-status-line): `HTTP/0.9` is no longer accepted here. A 0.9 request has no
        // version token and no headers, so a request line naming it is not one; upstream served it
        // and answered with an `HTTP/0.9 <status>` status line, which no HTTP version has (found
        // by core/fuzz's `http` target). It is now 505, as every version but 1.0 and 1.1.
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        // PATCH(http2-deadlock): any other well-formed version is answered 505 before a
        // `Request` is built (upstream parsed 2.0 and 3.0, then deadlocked answering them).
        v => match v.strip_prefix("HTTP/").map(|n| n.as_bytes()) {
            Some([major, b'.', minor]) if major.is_ascii_digit() && minor.is_ascii_digit() => {
                return Err(ReadError::UnsupportedVersion)
            }
            _ => return Err(ReadError::WrongRequestLine),
        },
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = match parts.next().map(parse_http_version) {
        Some(Err(ReadError::UnsupportedVersion)) if method.is_some() && path.is_some() => {
            return Err(ReadError::UnsupportedVersion)
        }
        v => v.and_then(Result::ok),
    };

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(matches!(
            super::parse_request_line("GET /hello HTTP/0.9"),
            Err(super::ReadError::UnsupportedVersion)
        ));
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }

    /// PATCH(http09-status-line): the input core/fuzz's `http` target found (an `HTTP/0.9` request
    /// line, then a header line the parser refuses) was answered `HTTP/0.9 400 Bad Request`, and
    /// a well-formed one `HTTP/0.9 200`: status lines of no HTTP version. Both are now 505 with an
    /// `HTTP/1.1` status line, and the connection is closed.
    #[test]
    fn http_0_9_request_line_answered_505_not_with_an_http_0_9_status_line() {
        let found = b"PUT /api/v1/files?targe\0\0&path=/t\0\0\0\0\0\0/\0\0\0mp/x HTTP/0.9\r\n\
            Host: xu\0\0\0\0\0\0\0,\r\nTransfer-Encoding: chunked\r\nh\n\r\r5\nello\r\n\
            k7;ext=1\r\n\"wod\r\n0\r\n\r\n";
        for input in [&found[..], b"GET / HTTP/0.9\r\n\r\nGET / HTTP/1.1\r\n\r\n"] {
            let served =
                crate::fuzzing::serve_bytes(input, crate::Limits::default(), drop).unwrap();
            let text = String::from_utf8_lossy(&served.output).into_owned();
            assert_eq!(served.requests, 0, "{}", text);
            assert!(text.starts_with("HTTP/1.1 505 "), "{}", text);
            assert!(!text.contains("HTTP/0.9"), "{}", text);
        }
    }
}
