//! Frames after the handshake: an established channel's `Opener` (fixed keys, counters at zero, as
//! the handshake leaves them) against arbitrary bytes, and the decoder reached through the real open
//! path by sealing the input with the sender's half.
//!
//! Input: one mode byte, then:
//! - mode bit 0 clear: the bytes are the ciphertext stream. Reading never panics and ends; after the
//!   first error every read fails (the connection is unusable).
//! - mode bit 0 set: the bytes are frame bodies (each a u16 length and that many bytes; what is left
//!   is the last body), sealed in order and read back through a reader that serves the stream in
//!   pieces of `1 + (mode >> 2)` bytes with a read timeout after each piece. Each frame opens to what
//!   `Message::decode` makes of its body, the timeouts lose nothing, and the stream ends clean. With
//!   mode bit 1 set, one bit of the sealed stream (chosen by the input) is flipped first: the frames
//!   before it open as sent, the one holding it does not.
#![no_main]

use std::io::{self, Read};

use burrow_core::protocol::Message;
use burrow_core::secure::{direction_from_key, Opener};
use burrow_core::Error;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

/// Serves `data` in pieces of `piece` bytes, failing with `TimedOut` before each piece.
struct Choppy<'a> {
    data: &'a [u8],
    piece: usize,
    timed_out: bool,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.timed_out && !self.data.is_empty() {
            self.timed_out = true;
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.timed_out = false;
        let n = buf.len().min(self.piece).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Reads one message, repeating the call after each timeout as a caller with a read timeout does.
fn read_through_timeouts(opener: &mut Opener, reader: &mut Choppy) -> Result<Message, Error> {
    loop {
        match opener.read_message(reader) {
            Err(e) if e.is_timeout() => continue,
            other => return other,
        }
    }
}

fn bodies(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        if len > data.len() - 2 {
            break;
        }
        out.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    out.push(data);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let (_, mut opener) = direction_from_key(&KEY);
        let mut stream = rest;
        while opener.read_message(&mut stream).is_ok() {}
        assert!(
            opener.read_message(&mut &b"\0\0\0\x20"[..]).is_err(),
            "an opener read again after an error"
        );
        return;
    }

    let (mut sealer, mut opener) = direction_from_key(&KEY);
    let bodies = bodies(rest);
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for body in &bodies {
        stream.extend_from_slice(&sealer.seal_body(body).expect("a fuzz input fits a frame"));
        ends.push(stream.len());
    }
    let flipped = if mode & 2 != 0 && !stream.is_empty() {
        let at = (usize::from(mode >> 2) * 7919 + rest.len()) % stream.len();
        stream[at] ^= 1 << (rest.len() % 8);
        Some(at)
    } else {
        None
    };
    let mut reader = Choppy {
        data: &stream,
        piece: 1 + usize::from(mode >> 2),
        timed_out: false,
    };
    for (i, body) in bodies.iter().enumerate() {
        let got = read_through_timeouts(&mut opener, &mut reader);
        if flipped.is_some_and(|at| at < ends[i]) {
            assert!(got.is_err(), "a frame with a flipped bit opened");
            return;
        }
        match (got, Message::decode(body)) {
            (Ok(m), Ok(want)) => assert_eq!(m, want),
            (Err(_), Err(_)) => return,
            (got, want) => panic!("opened {got:?}, the body decodes to {want:?}"),
        }
    }
    assert!(
        matches!(
            read_through_timeouts(&mut opener, &mut reader),
            Err(Error::Closed)
        ),
        "the stream did not end clean after its last frame"
    );
});
