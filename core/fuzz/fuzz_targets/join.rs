//! The join string parser (`JoinTicket::decode`): never a panic, and a string that decodes encodes
//! again to one that decodes to the same ticket.
//!
//! Input: one mode byte; bit 0 clear: the rest is the join string as pasted; bit 0 set: the rest is
//! the JSON inside it (wrapped as `burrow1.` + base64url here, so mutations reach the JSON and the
//! checks after it instead of breaking the base64).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use burrow_core::join::JoinTicket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_string(),
            Err(_) => return,
        }
    } else {
        format!("burrow1.{}", URL_SAFE_NO_PAD.encode(rest))
    };
    let Ok(ticket) = JoinTicket::decode(&text) else {
        return;
    };
    ticket
        .gateway_public_key()
        .expect("a decoded ticket has a usable gateway key");
    assert!(ticket.host_key.starts_with("SHA256:"));
    let again = JoinTicket::decode(&ticket.encode()).expect("a re-encoded ticket decodes");
    assert_eq!(again, ticket);
});
