//! Why the gateway refuses a request, independent of HTTP: the API maps each kind to a status code,
//! the CLI prints the message.

use std::fmt;

/// The class of a refusal: one stable machine code and one HTTP status each, used alike by JSON
/// answers (`{"error": …, "code": …}`) and NDJSON `error` events. Codes are API: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed or invalid input.
    BadRequest,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Valid credentials, not allowed.
    Forbidden,
    /// No such thing (or no such route).
    NotFound,
    /// The route exists, but not with this method.
    MethodNotAllowed,
    /// The request (body, or the command it carries) is larger than the route accepts.
    TooLarge,
    /// Clashes with existing state (name held by another key).
    Conflict,
    /// The node is approved but not linked now.
    NodeOffline,
    /// The node waits for an operator's approval.
    NodePending,
    /// The node was rejected by an operator.
    NodeRejected,
    /// The link to the node went down while the request was on it.
    NodeLost,
    /// The node refused or could not start the command (policy, spawn failure).
    ExecFailed,
    /// A service of the gateway is not reachable now.
    Unavailable,
    /// Something took too long.
    Timeout,
    /// The gateway holds as many nodes as `serve --max-nodes` allows.
    NodeLimit,
    /// A cap on concurrent use is reached (service streams): try again later.
    TooMany,
    /// The node could not reach what it was asked to connect to (a service's address).
    BadGateway,
    /// A bug or an I/O failure on the gateway.
    Internal,
}

impl Kind {
    /// Every kind, for tests and documentation.
    pub const ALL: [Kind; 18] = [
        Kind::BadRequest,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::TooLarge,
        Kind::Conflict,
        Kind::NodeOffline,
        Kind::NodePending,
        Kind::NodeRejected,
        Kind::NodeLost,
        Kind::ExecFailed,
        Kind::Unavailable,
        Kind::Timeout,
        Kind::NodeLimit,
        Kind::TooMany,
        Kind::BadGateway,
        Kind::Internal,
    ];

    /// The HTTP status of an answer refused for this reason.
    pub fn status(self) -> u16 {
        match self {
            Kind::BadRequest | Kind::ExecFailed => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::Conflict | Kind::NodePending | Kind::NodeRejected | Kind::NodeLimit => 409,
            Kind::TooLarge => 413,
            Kind::TooMany => 429,
            Kind::BadGateway => 502,
            Kind::Internal => 500,
            Kind::NodeOffline | Kind::NodeLost | Kind::Unavailable => 503,
            Kind::Timeout => 504,
        }
    }

    /// The stable machine code (`"code"` in every error answer and event).
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::TooLarge => "too_large",
            Kind::Conflict => "conflict",
            Kind::NodeOffline => "node_offline",
            Kind::NodePending => "node_pending",
            Kind::NodeRejected => "node_rejected",
            Kind::NodeLost => "node_lost",
            Kind::ExecFailed => "exec_failed",
            Kind::Unavailable => "unavailable",
            Kind::Timeout => "timeout",
            Kind::NodeLimit => "node_limit",
            Kind::TooMany => "too_many",
            Kind::BadGateway => "bad_gateway",
            Kind::Internal => "internal",
        }
    }

    /// The kind of a stable code (as stored with a job's result).
    pub fn from_code(code: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes are API: each is unique, snake_case, and every error status is a 4xx or 5xx.
    #[test]
    fn every_kind_has_a_unique_code_and_an_error_status() {
        let mut seen = std::collections::HashSet::new();
        for kind in Kind::ALL {
            let code = kind.code();
            assert!(seen.insert(code), "{code} used twice");
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert!((400..600).contains(&kind.status()), "{code}");
        }
    }
}
