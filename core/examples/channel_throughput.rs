//! Benchmark (not a test): how fast the secure channel moves bulk data, next to the same frames
//! without the AEAD layer (protocol v1 framed them like `write_plain`/`read_plain` and sealed
//! nothing), over a Unix socket pair between two threads, 32 KiB `Data` frames (the agent's chunk).
//!
//! `cargo run --release -p burrow-core --example channel_throughput [MB]` (default 500). Each
//! direction is measured separately: gateway → agent and agent → gateway use different keys and
//! counters but the same code, so the two figures differ only by noise.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use burrow_core::identity::Identity;
use burrow_core::protocol::{read_plain, write_plain, Message, Role, MAX_CHUNK, MAX_FRAME};
use burrow_core::secure::handshake;

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .map_or(500, |a| a.parse().expect("MB is a number"));
    let frames = mb * 1_000_000 / MAX_CHUNK;
    let bytes = (frames * MAX_CHUNK) as f64;
    let data = vec![0x5a; MAX_CHUNK];
    let frame = |i: usize| Message::Data {
        id: 1,
        stream: (i % 2) as u32 + 1,
        data: data.clone(),
    };

    let plain = run(|mut tx, rx| {
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..frames {
                    write_plain(&mut tx, &frame(i)).unwrap();
                }
            });
            let mut rx = BufReader::new(rx);
            for _ in 0..frames {
                Message::decode(&read_plain(&mut rx, MAX_FRAME).unwrap()).unwrap();
            }
        })
    });
    println!(
        "framing only (no AEAD, as v1): {:.0} MB/s",
        bytes / plain / 1e6
    );

    for (name, sender_role) in [
        ("gateway -> agent", Role::Gateway),
        ("agent -> gateway", Role::Agent),
    ] {
        let sealed = run(|tx, rx| {
            let (g, a) = (Identity::generate("g"), Identity::generate("a"));
            let (gk, ak) = (g.public(), a.public());
            let (me, peer_key, them, them_key) = match sender_role {
                Role::Gateway => (g, ak, a, gk),
                Role::Agent => (a, gk, g, ak),
            };
            let (mut tx, mut rx) = (tx, rx);
            let receiver_role = sender_role.peer();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut ch =
                        handshake(&mut rx, &them, receiver_role, |k| *k == them_key).unwrap();
                    let mut reader = BufReader::new(&rx);
                    for _ in 0..frames {
                        ch.opener.read_message(&mut reader).unwrap();
                    }
                });
                let mut ch = handshake(&mut tx, &me, sender_role, |k| *k == peer_key).unwrap();
                let mut writer = BufWriter::new(&tx);
                for i in 0..frames {
                    ch.sealer.write_message(&mut writer, &frame(i)).unwrap();
                }
                writer.flush().unwrap();
            })
        });
        println!("sealed (v2), {name}: {:.0} MB/s", bytes / sealed / 1e6);
    }
}

/// Runs `body` on a fresh socket pair; returns its wall time in seconds (the handshake, a few
/// hundred microseconds, included).
fn run(body: impl FnOnce(UnixStream, UnixStream)) -> f64 {
    let (a, b) = UnixStream::pair().unwrap();
    let started = Instant::now();
    body(a, b);
    started.elapsed().as_secs_f64()
}
