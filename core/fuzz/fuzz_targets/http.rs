//! The patched tiny_http's request parsing (gateway/vendor/tiny_http), with the gateway's own
//! bounds (`burrow_gateway::fuzzing::http_limits`): the input is everything a client sent on one
//! connection; its requests are read, their bodies read (fixed-length and chunked, up to the exec
//! route's limit) and answered, until the parser stops. Never a panic or a hang (the parser reads
//! from a socket whose other side has closed), never more requests than input bytes, and whatever
//! the server writes back is HTTP.
//!
//! A request whose path starts with `/unread` is answered without reading its body, so the drain
//! of unread bodies (PATCHES.md, 1) is reached too.
#![no_main]

use std::io::Read;

use burrow_gateway::fuzzing::{http_limits, EXEC_BODY};
use libfuzzer_sys::fuzz_target;
use tiny_http::fuzzing::serve_bytes;
use tiny_http::Response;

fuzz_target!(|data: &[u8]| {
    let served = serve_bytes(data, http_limits(), |mut request| {
        if !request.url().starts_with("/unread") {
            let mut body = Vec::new();
            let _ = request
                .as_reader()
                .take(EXEC_BODY as u64 + 1)
                .read_to_end(&mut body);
        }
        let _ = request.respond(Response::from_string("ok"));
    })
    .expect("serving bytes from memory");
    assert!(
        served.output.is_empty() || served.output.starts_with(b"HTTP/1."),
        "the server wrote something other than HTTP: {:?}",
        String::from_utf8_lossy(&served.output[..served.output.len().min(64)])
    );
});
