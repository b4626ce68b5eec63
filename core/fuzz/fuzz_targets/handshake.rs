//! The v2 handshake (`burrow_core::secure::handshake`) against a peer that is nothing but the fuzz
//! input: never a panic, never a channel (the input holds no key of this connection, so no `Auth`
//! can open), and a peer key that `accept` refuses is never signed for.
//!
//! Input: one mode byte (bit 0: we are the agent, else the gateway; bit 1: `accept` takes any key,
//! else only the pinned peer key), then the bytes the peer sends.
#![no_main]

use std::io::{self, Read, Write};

use burrow_core::identity::Identity;
use burrow_core::protocol::Role;
use burrow_core::secure::handshake;
use libfuzzer_sys::fuzz_target;

/// A connection whose peer sends `input` and then closes; what we write is kept.
struct Wire<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Our `Hello` frame: a u32 length and a 104-byte body.
const HELLO_FRAME: usize = 4 + 104;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, peer_bytes)) = data.split_first() else {
        return;
    };
    let me = Identity::from_seed([1; 32], "me");
    let pinned = Identity::from_seed([2; 32], "peer").public();
    let role = if mode & 1 == 0 {
        Role::Gateway
    } else {
        Role::Agent
    };
    let accept_any = mode & 2 != 0;
    let mut wire = Wire {
        input: peer_bytes,
        output: Vec::new(),
    };
    let mut accepted = None;
    let result = handshake(&mut wire, &me, role, |key| {
        let ok = accept_any || *key == pinned;
        accepted = Some(ok);
        ok
    });
    assert!(
        result.is_err(),
        "the handshake succeeded against bytes that hold no key of this connection"
    );
    // Until a peer key is accepted we send our Hello and nothing else: no signature for anyone.
    if accepted != Some(true) {
        assert_eq!(wire.output.len(), HELLO_FRAME, "wrote more than a Hello");
    }
});
