//! The one error type of `burrow-core`: every fallible function in this crate returns it.

use std::io;

/// What went wrong in the core library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the thing (a path, a peer).
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A key file is readable or writable by other users.
    #[error("{path} is accessible by other users (mode {mode:o}); run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The offending file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A key, key file or key line could not be parsed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A join string could not be decoded.
    #[error("invalid join string: {0}")]
    InvalidJoin(String),
    /// A signature did not verify against the expected key.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// A peer broke the wire protocol (bad frame, unexpected message, wrong version).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A sealed frame failed to open: altered, injected, replayed, reordered or cut short. The
    /// connection must be dropped.
    #[error("a frame failed authentication (altered, injected, replayed or reordered): {0}")]
    Integrity(&'static str),
    /// A message would make a frame larger than the peer accepts.
    #[error("{what} of {size} bytes exceeds the {max} byte limit of one frame")]
    TooLarge {
        /// What was being encoded.
        what: &'static str,
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// A config file could not be read, or holds an unknown key or a bad value; the message names the
    /// file (and the line).
    #[error("{0}")]
    Config(String),
    /// `install` cannot write a service's files as asked; the message says what to pass or do instead.
    #[error("{message}")]
    Install {
        /// What went wrong, and what to do about it.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this is a read that timed out (the stream's read timeout), which a caller may retry.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}
