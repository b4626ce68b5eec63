use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    // PATCH(accept-panic): was `impl Clone` with `try_clone().unwrap()`, which ran on the accept
    // thread: out of file descriptors (EMFILE), it panicked and the listener was gone for good.
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }

    // PATCH(read-timeouts): the socket's SO_RCVTIMEO, shared by both halves; writes are untouched.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(timeout),
            // PATCH(rustls-0.23): the rustls stream sets it on the socket under its session.
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(tls) => tls.set_read_timeout(timeout),
            // Not wired for OpenSSL streams (burrow builds the rustls one); upstream's behaviour.
            #[cfg(feature = "ssl-openssl")]
            Stream::Https(_) => Ok(()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // PATCH(read-timeouts): what bounds the next socket read, and the SO_RCVTIMEO last set.
    read_limit: ReadLimit,
    applied_timeout: Option<Duration>,
}

/// PATCH(read-timeouts): how long a read on the socket may wait for the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadLimit {
    /// Upstream behaviour: wait forever.
    None,
    /// The request head must be complete by then (a total deadline, so a client that trickles a
    /// byte at a time cannot keep it open).
    Deadline(Instant),
    /// Each read of a body may wait this long for data (inactivity, so large uploads still work).
    Idle(Duration),
}

impl RefinedTcpStream {
    // PATCH(accept-panic): fallible (cloning the socket needs a file descriptor).
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            read_limit: ReadLimit::None,
            applied_timeout: None,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            read_limit: ReadLimit::None,
            applied_timeout: None,
        };

        Ok((read, write))
    }

    /// PATCH(read-timeouts): bounds the following reads; see [`ReadLimit`].
    pub(crate) fn set_read_limit(&mut self, limit: ReadLimit) {
        self.read_limit = limit;
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    // PATCH(peer-credentials)
    pub(crate) fn peer_credentials(&self) -> Option<crate::PeerCredentials> {
        match &self.stream {
            Stream::Http(connection) => connection.peer_credentials(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => None,
        }
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        // PATCH(read-timeouts): upstream read with no timeout at all, so a client that stopped
        // sending held its connection thread (head) or the worker reading its body forever.
        let timeout = match self.read_limit {
            ReadLimit::None => None,
            ReadLimit::Idle(idle) => Some(idle),
            ReadLimit::Deadline(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(IoError::new(ErrorKind::TimedOut, "request head timed out"));
                }
                Some(left)
            }
        };
        if timeout != self.applied_timeout {
            self.stream.set_read_timeout(timeout)?;
            self.applied_timeout = timeout;
        }
        match self.stream.read(buf) {
            // An expired SO_RCVTIMEO reads as EAGAIN on Unix; callers (and the 408 answer) look
            // for `TimedOut`.
            Err(e) if timeout.is_some() && e.kind() == ErrorKind::WouldBlock => {
                Err(IoError::new(ErrorKind::TimedOut, "client stopped sending"))
            }
            other => other,
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
