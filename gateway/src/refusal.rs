//! Why the gateway refuses a request, independent of HTTP: the API maps each kind to a status code,
//! the CLI prints the message.

use std::fmt;

/// The class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed or invalid input.
    BadRequest,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Valid credentials, not allowed.
    Forbidden,
    /// No such thing.
    NotFound,
    /// Clashes with existing state (name held by another key).
    Conflict,
    /// The request is larger than a limit (e.g. one protocol frame).
    TooLarge,
    /// The node or a service is not reachable now.
    Unavailable,
    /// Something took too long.
    Timeout,
    /// A bug or an I/O failure on the gateway.
    Internal,
}

/// A refusal with a message for humans.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: Kind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

impl From<anyhow::Error> for Refusal {
    fn from(e: anyhow::Error) -> Refusal {
        Refusal::new(Kind::Internal, format!("{e:#}"))
    }
}

/// Shorthand constructors.
pub fn bad_request(m: impl Into<String>) -> Refusal {
    Refusal::new(Kind::BadRequest, m)
}
pub fn forbidden(m: impl Into<String>) -> Refusal {
    Refusal::new(Kind::Forbidden, m)
}
pub fn not_found(m: impl Into<String>) -> Refusal {
    Refusal::new(Kind::NotFound, m)
}
pub fn conflict(m: impl Into<String>) -> Refusal {
    Refusal::new(Kind::Conflict, m)
}
