//! The secure channel against a hostile path: every way of altering, injecting, replaying, reordering
//! or relaying frames must fail, and fail by dropping the connection.

use super::*;
use crate::protocol::{read_plain, stream, ExecSpec};
use std::io;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

fn samples() -> Vec<Message> {
    crate::protocol::tests::samples()
}

type Side = (Result<Channel>, UnixStream);

/// Runs the handshake between a gateway and an agent over `UnixStream` pairs joined by `path`, which
/// gets the gateway's end and the agent's end (a passthrough, a relay, an attacker).
fn run_with_path(
    gateway: Identity,
    agent: Identity,
    path: impl FnOnce(UnixStream, UnixStream) + Send + 'static,
) -> (Side, Side) {
    let (mut g, g_peer) = UnixStream::pair().unwrap();
    let (mut a, a_peer) = UnixStream::pair().unwrap();
    for s in [&g, &a, &g_peer, &a_peer] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let relay = thread::spawn(move || path(g_peer, a_peer));
    let (gk, ak) = (gateway.public(), agent.public());
    let gt = thread::spawn(move || {
        let r = handshake(&mut g, &gateway, Role::Gateway, |k| *k == ak);
        (r, g)
    });
    let r = handshake(&mut a, &agent, Role::Agent, |k| *k == gk);
    let g_side = gt.join().unwrap();
    // Wake a relay still waiting on either side.
    let _ = g_side.1.shutdown(std::net::Shutdown::Both);
    let _ = a.shutdown(std::net::Shutdown::Both);
    relay.join().unwrap();
    (g_side, (r, a))
}

/// Copies bytes both ways, recording everything it carried.
fn passthrough(
    carried: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> impl FnOnce(UnixStream, UnixStream) + Send {
    move |g, a| {
        let pump = |mut from: UnixStream,
                    mut to: UnixStream,
                    carried: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    carried.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        let t1 = pump(
            g.try_clone().unwrap(),
            a.try_clone().unwrap(),
            carried.clone(),
        );
        let t2 = pump(a, g, carried);
        t1.join().unwrap();
        t2.join().unwrap();
    }
}

/// A connected pair of channels, for the frame tests.
fn keys() -> (Sealer, Opener) {
    let key: [u8; 32] = crate::random_bytes();
    (Sealer::new(&key), Opener::new(&key))
}

#[test]
fn both_sides_learn_each_other_and_talk_through_a_passive_relay() {
    let (g, a) = (Identity::generate("g"), Identity::generate("a"));
    let carried = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // A direct pair for the conversation; the relay (which `run_with_path` tears down after the
    // handshake) for the handshake alone.
    let (mut gs, mut as_) = UnixStream::pair().unwrap();
    let (gi, ai) = (g.clone(), a.clone());
    let t = thread::spawn(move || {
        let c = handshake(&mut gs, &gi, Role::Gateway, |k| *k == ai.public()).unwrap();
        (c, gs)
    });
    let mut ac = handshake(&mut as_, &a, Role::Agent, |k| *k == g.public()).unwrap();
    let (mut gc, mut gs) = t.join().unwrap();
    assert_eq!(gc.peer, a.public());
    assert_eq!(ac.peer, g.public());
    for m in samples() {
        gc.sealer.write_message(&mut gs, &m).unwrap();
        assert_eq!(ac.opener.read_message(&mut as_).unwrap(), m);
        ac.sealer.write_message(&mut as_, &m).unwrap();
        assert_eq!(gc.opener.read_message(&mut gs).unwrap(), m);
    }
    drop(gs);
    assert!(matches!(
        ac.opener.read_message(&mut as_),
        Err(Error::Closed)
    ));

    // Through a relay that only copies, the handshake works.
    let ((rg, _), (ra, _)) = run_with_path(
        Identity::generate("g"),
        Identity::generate("a"),
        passthrough(carried.clone()),
    );
    assert!(rg.is_ok() && ra.is_ok());
}

#[test]
fn a_relay_sees_no_plaintext() {
    let (g, a) = (Identity::generate("g"), Identity::generate("a"));
    let (mut g_end, relay_g) = UnixStream::pair().unwrap();
    let (mut a_end, relay_a) = UnixStream::pair().unwrap();
    let carried = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = thread::spawn({
        let carried = carried.clone();
        move || passthrough(carried)(relay_g, relay_a)
    });
    let (gi, ak) = (g.clone(), a.public());
    let t = thread::spawn(move || {
        let c = handshake(&mut g_end, &gi, Role::Gateway, |k| *k == ak).unwrap();
        (c, g_end)
    });
    let mut ac = handshake(&mut a_end, &a, Role::Agent, |k| *k == g.public()).unwrap();
    let (mut gc, mut g_end) = t.join().unwrap();
    let secret = b"MARKER-only-the-endpoints-see-this".to_vec();
    gc.sealer
        .write_message(
            &mut g_end,
            &Message::Exec {
                id: 1,
                job: "j".into(),
                spec: ExecSpec {
                    command: Some(String::from_utf8(secret.clone()).unwrap()),
                    ..ExecSpec::default()
                },
            },
        )
        .unwrap();
    assert!(matches!(
        ac.opener.read_message(&mut a_end).unwrap(),
        Message::Exec { .. }
    ));
    ac.sealer
        .write_message(
            &mut a_end,
            &Message::Data {
                id: 1,
                stream: stream::STDOUT,
                data: secret.clone(),
            },
        )
        .unwrap();
    assert!(matches!(
        gc.opener.read_message(&mut g_end).unwrap(),
        Message::Data { .. }
    ));
    drop((g_end, a_end));
    relay.join().unwrap();
    let carried = carried.lock().unwrap();
    assert!(carried.len() > 200, "the relay carried the conversation");
    assert!(
        !carried.windows(secret.len()).any(|w| w == secret),
        "plaintext crossed the relay"
    );
}

#[test]
fn impostor_gateway_is_refused() {
    let (g, a, evil) = (
        Identity::generate("g"),
        Identity::generate("a"),
        Identity::generate("e"),
    );
    let (mut x, mut y) = UnixStream::pair().unwrap();
    let ak = a.public();
    let t =
        thread::spawn(move || handshake(&mut x, &evil, Role::Gateway, |k| *k == ak).map(|_| ()));
    let r = handshake(&mut y, &a, Role::Agent, |k| *k == g.public());
    assert!(matches!(r, Err(Error::BadSignature(_))), "{:?}", r.err());
    drop(y);
    assert!(t.join().unwrap().is_err());
}

#[test]
fn tampering_with_any_byte_of_a_sealed_frame_is_detected() {
    for m in samples() {
        let frame = keys().0.seal(&m).unwrap();
        let key: [u8; 32] = crate::random_bytes();
        let genuine = Sealer::new(&key).seal(&m).unwrap();
        assert_eq!(genuine.len(), frame.len());
        for at in 0..genuine.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = genuine.clone();
                bad[at] ^= flip;
                let mut opener = Opener::new(&key);
                let r = opener.read_message(&mut &bad[..]);
                assert!(
                    r.is_err(),
                    "{} with byte {at} ^ {flip:#x} opened",
                    m.kind_name()
                );
                // And the opener stays refused: the connection is unusable.
                assert!(opener.read_message(&mut &genuine[..]).is_err());
            }
        }
        // The untouched frame opens.
        assert_eq!(
            Opener::new(&key).read_message(&mut &genuine[..]).unwrap(),
            m
        );
    }
}

#[test]
fn replayed_frame_is_detected() {
    let (mut s, mut o) = keys();
    let exec = Message::Cancel { id: 1 };
    let frame = s.seal(&exec).unwrap();
    assert_eq!(o.read_message(&mut &frame[..]).unwrap(), exec);
    let r = o.read_message(&mut &frame[..]);
    assert!(matches!(r, Err(Error::Integrity(_))), "{r:?}");
}

#[test]
fn reordered_frames_are_detected() {
    let (mut s, mut o) = keys();
    let first = s.seal(&Message::Ping(1)).unwrap();
    let second = s.seal(&Message::Ping(2)).unwrap();
    let r = o.read_message(&mut &second[..]);
    assert!(matches!(r, Err(Error::Integrity(_))), "{r:?}");
    assert!(o.read_message(&mut &first[..]).is_err());
}

#[test]
fn dropped_frame_is_detected() {
    // A relay that drops one frame (a Cancel) makes every later frame fail to open.
    let (mut s, mut o) = keys();
    let _cancel = s.seal(&Message::Cancel { id: 1 }).unwrap();
    let next = s.seal(&Message::Ping(2)).unwrap();
    assert!(matches!(
        o.read_message(&mut &next[..]),
        Err(Error::Integrity(_))
    ));
}

#[test]
fn truncated_frame_is_detected() {
    let (mut s, _) = keys();
    let frame = s.seal(&Message::Ping(7)).unwrap();
    for cut in 1..frame.len() {
        let key_o = &mut keys().1;
        assert!(matches!(
            key_o.read_message(&mut &frame[..cut]),
            Err(Error::Integrity(_))
        ));
    }
}

#[test]
fn injected_frames_are_detected() {
    let (_, mut o) = keys();
    // A plaintext frame of the kind v1 accepted after its handshake.
    let mut plain = Vec::new();
    crate::protocol::write_plain(&mut plain, &Message::Cancel { id: 1 }).unwrap();
    assert!(o.read_message(&mut &plain[..]).is_err());
    // A frame sealed under another key (an attacker's own session).
    let (_, mut o) = keys();
    let forged = keys().0.seal(&Message::Cancel { id: 1 }).unwrap();
    assert!(matches!(
        o.read_message(&mut &forged[..]),
        Err(Error::Integrity(_))
    ));
}

#[test]
fn counter_overflow_ends_the_connection() {
    let (mut s, mut o) = keys();
    s.set_counter(u64::MAX - 1);
    o.set_counter(u64::MAX - 1);
    let last = s.seal(&Message::Ping(1)).unwrap();
    assert_eq!(o.read_message(&mut &last[..]).unwrap(), Message::Ping(1));
    assert!(
        s.seal(&Message::Ping(2)).is_err(),
        "a nonce was about to be reused"
    );
}

#[test]
fn oversized_message_is_refused_when_sealing() {
    let (mut s, _) = keys();
    let big = Message::Failed {
        id: 1,
        message: "x".repeat(MAX_FRAME),
    };
    assert!(matches!(s.seal(&big), Err(Error::TooLarge { .. })));
    // The counter was not spent: the next frame still opens in order.
    let (mut s, mut o) = keys();
    let _ = s.seal(&big);
    let f = s.seal(&Message::Ping(3)).unwrap();
    assert_eq!(o.read_message(&mut &f[..]).unwrap(), Message::Ping(3));
}

#[test]
fn a_read_timeout_mid_frame_loses_nothing() {
    let (mut s, mut o) = keys();
    let frame = s.seal(&Message::Ping(9)).unwrap();
    let (mut w, mut r) = UnixStream::pair().unwrap();
    r.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    w.write_all(&frame[..7]).unwrap();
    let e = o.read_message(&mut r).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    w.write_all(&frame[7..]).unwrap();
    assert_eq!(o.read_message(&mut r).unwrap(), Message::Ping(9));
}

/// A v1 peer (or a relay rewriting the version) is refused: no downgrade.
#[test]
fn a_v1_hello_is_refused() {
    let a = Identity::generate("a");
    let (mut x, mut y) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || handshake(&mut y, &a, Role::Agent, |_| true).map(|_| ()));
    // What a v1 gateway sent: version 1, role, key, nonce.
    let mut body = vec![1u8, 0, 0, 0, 0];
    body.extend_from_slice(&1u16.to_be_bytes());
    body.push(1);
    body.extend_from_slice(&[5; 64]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    x.write_all(&frame).unwrap();
    let err = t.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
    // It answered with its own v2 Hello and nothing else.
    let hello = read_plain(&mut x, 256).unwrap();
    assert!(matches!(
        Message::decode(&hello).unwrap(),
        Message::Hello { version: 2, .. }
    ));
    x.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(read_plain(&mut x, 256), Err(Error::Closed)));
}

/// A relay that rewrites anything in a Hello (here the nonce) breaks the signatures on both sides.
#[test]
fn an_altered_hello_fails_the_handshake() {
    let ((g, _), (a, _)) =
        run_with_path(Identity::generate("g"), Identity::generate("a"), |g, a| {
            forward_hellos(g, a, |hello| {
                if let Message::Hello { nonce, .. } = hello {
                    nonce[0] ^= 1;
                }
            })
        });
    assert!(g.is_err() && a.is_err());
}

/// A man in the middle with its own ephemeral keys (keeping both identity keys, so `accept` passes):
/// the transcripts differ, so neither signature verifies and neither side ends up with a channel.
#[test]
fn relayed_handshake_with_substituted_ephemeral_keys_fails() {
    let ((g, _), (a, _)) =
        run_with_path(Identity::generate("g"), Identity::generate("a"), |g, a| {
            let mitm = x25519::KeyPair::generate();
            forward_hellos(g, a, move |hello| {
                if let Message::Hello { ephemeral, .. } = hello {
                    *ephemeral = *mitm.pk;
                }
            })
        });
    let (g, a) = (
        g.err().expect("gateway refused"),
        a.err().expect("agent refused"),
    );
    // The first sealed frame (Auth) fails to open: the keys differ.
    assert!(
        matches!(g, Error::Integrity(_) | Error::BadSignature(_)),
        "{g}"
    );
    assert!(
        matches!(a, Error::Integrity(_) | Error::BadSignature(_)),
        "{a}"
    );
}

/// Reads each side's Hello, rewrites it with `edit`, passes it on, then copies the rest both ways.
fn forward_hellos(
    g: UnixStream,
    a: UnixStream,
    edit: impl Fn(&mut Message) + Send + Clone + 'static,
) {
    let hop = move |mut from: UnixStream, mut to: UnixStream, edit: &dyn Fn(&mut Message)| {
        let Ok(body) = read_plain(&mut from, 256) else {
            return;
        };
        let mut hello = Message::decode(&body).unwrap();
        edit(&mut hello);
        let _ = crate::protocol::write_plain(&mut to, &hello);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    };
    let (g2, a2) = (g.try_clone().unwrap(), a.try_clone().unwrap());
    let e2 = edit.clone();
    let t = thread::spawn(move || hop(g2, a2, &e2));
    hop(a, g, &edit);
    t.join().unwrap();
}

#[test]
fn random_bytes_never_panic_the_opener() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 100) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
        if bytes.len() >= 4 {
            // Plausible lengths reach the AEAD instead of stopping at the bound check.
            bytes[..4].copy_from_slice(&((len as u32).saturating_sub(4)).to_be_bytes());
        }
        let _ = keys().1.read_message(&mut &bytes[..]);
    }
}
