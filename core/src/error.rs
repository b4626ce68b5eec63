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
}
