//! PATCH(limits, unread-body, content-length): how a request body is framed and bounded — kept
//! out of request.rs so that file stays close to upstream. See PATCHES.md.

use std::io::{self, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chunked_transfer::Decoder;

use crate::request::RequestCreationError;
use crate::Header;

/// PATCH(limits): the part of [`crate::Limits`] that shapes how a body is read, and the flag to
/// raise when a body is left unread so the connection must close.
pub(crate) struct BodyLimits {
    pub max_body_bytes: Option<u64>,
    pub buffer_body_up_to: usize,
    pub drain_limit: usize,
    pub close_connection: Arc<AtomicBool>,
}

impl Default for BodyLimits {
    fn default() -> BodyLimits {
        let limits = crate::Limits::default();
        BodyLimits {
            max_body_bytes: limits.max_body_bytes,
            buffer_body_up_to: limits.buffer_body_up_to,
            drain_limit: limits.drain_limit,
            close_connection: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// PATCH(unread-body): a chunked body reader that, dropped before its end, marks the connection
/// for closing (upstream left the rest of the body to be parsed as the next request).
pub(crate) struct ChunkedBody<R: Read> {
    pub decoder: Decoder<R>,
    pub finished: bool,
    pub close_connection: Arc<AtomicBool>,
}

impl<R: Read> Read for ChunkedBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.decoder.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finished = true;
        }
        Ok(n)
    }
}

impl<R: Read> Drop for ChunkedBody<R> {
    fn drop(&mut self) {
        if !self.finished {
            self.close_connection.store(true, Ordering::Release);
        }
    }
}

/// Upstream took the first `Content-Length` and silently ignored one that did not parse (the body
/// was then read as the next request). RFC 9112 §6.3: an invalid Content-Length, or several that
/// differ, is an unrecoverable framing error.
pub(crate) fn parse_content_length(
    headers: &[Header],
) -> Result<Option<usize>, RequestCreationError> {
    let mut length: Option<usize> = None;
    for h in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
        let value = h.value.as_str().trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RequestCreationError::BadContentLength);
        }
        // Too many digits for usize is certainly over any body limit.
        let parsed = match usize::from_str(value) {
            Ok(n) => n,
            Err(_) => return Err(RequestCreationError::BodyTooLarge),
        };
        if length.is_some_and(|l| l != parsed) {
            return Err(RequestCreationError::BadContentLength);
        }
        length = Some(parsed);
    }
    Ok(length)
}
