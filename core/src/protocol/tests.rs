//! Codec tests: every kind round-trips, bounds are enforced on both ends, bad input is an error.

use super::*;
use crate::api::Metrics;
use crate::Error;

pub(crate) fn samples() -> Vec<Message> {
    vec![
        Message::Hello {
            version: VERSION,
            role: Role::Agent,
            key: [7; 32],
            ephemeral: [8; 32],
            nonce: [9; 32],
        },
        Message::Auth { signature: [3; 64] },
        Message::Exec {
            id: 5,
            job: "0123456789abcdef0123456789abcdef".into(),
            spec: ExecSpec {
                argv: Some(vec!["uname".into(), "-a".into()]),
                timeout_s: 60,
                ..ExecSpec::default()
            },
        },
        Message::Open {
            id: 5,
            stream: 16,
            purpose: Purpose::File,
            params: r#"{"path":"/etc/hostname"}"#.into(),
        },
        Message::Open {
            id: 5,
            stream: 17,
            purpose: Purpose::Other(200),
            params: String::new(),
        },
        Message::Data {
            id: 5,
            stream: stream::STDOUT,
            data: vec![0, 0xff, 0xfe, b'\n'],
        },
        Message::Data {
            id: 6,
            stream: stream::STDERR,
            data: vec![],
        },
        Message::Credit {
            id: 5,
            stream: stream::STDOUT,
            bytes: 4096,
        },
        Message::Eof {
            id: 5,
            stream: stream::STDIN,
        },
        Message::Reset {
            id: 5,
            stream: 16,
            reason: "no such file".into(),
        },
        Message::Resize {
            id: 5,
            rows: 50,
            cols: 132,
        },
        Message::Signal { id: 5, signal: 15 },
        Message::Exit {
            id: 5,
            status: ExitStatus {
                exit_code: None,
                signal: Some(9),
                timed_out: true,
                duration_ms: 10,
            },
        },
        Message::Failed {
            id: 2,
            message: "no such file".into(),
        },
        Message::Cancel { id: 5 },
        Message::Done { id: 5 },
        Message::Unknown {
            id: 6,
            code: super::unknown::FORGOTTEN.into(),
            reason: "outcome no longer kept".into(),
        },
        Message::Heartbeat(Heartbeat {
            version: "0.1.0".into(),
            metrics: Metrics {
                uptime_s: 7,
                load1: 0.5,
                ..Metrics::default()
            },
            max_jobs: 64,
            running: 2,
            ..Heartbeat::default()
        }),
        Message::Bye {
            code: bye::REVOKED.into(),
            reason: "node revoked by admin".into(),
        },
        Message::Ping(42),
        Message::Pong(42),
    ]
}

#[test]
fn every_message_round_trips() {
    let mut stream = Vec::new();
    for m in samples() {
        write_plain(&mut stream, &m).unwrap();
    }
    let mut reader = &stream[..];
    for m in samples() {
        let body = read_plain(&mut reader, MAX_FRAME).unwrap();
        assert_eq!(Message::decode(&body).unwrap(), m);
    }
    assert!(matches!(
        read_plain(&mut reader, MAX_FRAME),
        Err(Error::Closed)
    ));
}

#[test]
fn oversized_message_is_an_encoding_error_not_a_frame() {
    let big = Message::Exec {
        id: 1,
        job: "j".into(),
        spec: ExecSpec {
            command: Some("x".repeat(MAX_FRAME)),
            ..ExecSpec::default()
        },
    };
    let err = big.encode_body().unwrap_err();
    assert!(matches!(err, Error::TooLarge { what: "Exec", .. }), "{err}");
    let long_job = Message::Exec {
        id: 1,
        job: "j".repeat(256),
        spec: ExecSpec::default(),
    };
    assert!(matches!(
        long_job.encode_body(),
        Err(Error::TooLarge { .. })
    ));
    // The largest Data that fits is accepted.
    let fits = Message::Data {
        id: 1,
        stream: 1,
        data: vec![0; MAX_FRAME - 9],
    };
    assert_eq!(fits.encode_body().unwrap().len(), MAX_FRAME);
}

#[test]
fn oversized_frame_is_refused_before_allocation() {
    let frame = (u32::MAX).to_be_bytes();
    let err = read_plain(&mut &frame[..], MAX_FRAME).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[test]
fn a_v1_hello_is_refused_by_version() {
    // What a v1 peer sent: version 1, role, key, nonce (no ephemeral key).
    let mut body = vec![1u8, 0, 0, 0, 0];
    body.extend_from_slice(&1u16.to_be_bytes());
    body.push(1);
    body.extend_from_slice(&[0; 64]);
    let err = Message::decode(&body).unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
}

#[test]
fn truncated_bodies_are_errors_not_panics() {
    for m in samples() {
        let body = m.encode_body().unwrap();
        for cut in 0..body.len() {
            // Some prefixes are valid messages themselves (Data with fewer bytes); none may panic.
            let _ = Message::decode(&body[..cut]);
        }
        assert!(Message::decode(&body[..4]).is_err());
    }
}

/// A cheap stand-in for the fuzzer: random bytes must never panic the decoder.
#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..50_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 120) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
        // Every kind gets its share of random payloads.
        if let Some(first) = bytes.first_mut() {
            *first = (i % 20) as u8;
        }
        let _ = Message::decode(&bytes);
        let _ = read_plain(&mut &bytes[..], MAX_FRAME);
    }
}
