//! The gateway's exec request parser (`burrow_gateway::fuzzing::parse_request`, the one both exec
//! routes call): never a panic; every refusal a 400 (`bad_request`); and what it accepts is a command
//! the agent reads back as checked: exactly one of `command`/`argv`, a timeout in range, a valid
//! lane, and an `Exec` frame that fits and decodes to the same spec.
//!
//! Input: one mode byte (bit 0: the body came to `POST /api/v1/nodes/pi-1/exec`, else to
//! `POST /api/v1/exec`), then the request body.
#![no_main]

use burrow_core::protocol::Message;
use burrow_gateway::fuzzing::{parse_request, Kind, EXEC_BODY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let node = (mode & 1 != 0).then_some("pi-1");
    let request = match parse_request(body, node) {
        Ok(request) => request,
        Err(refusal) => {
            assert_eq!(refusal.kind, Kind::BadRequest, "{refusal}");
            return;
        }
    };
    let spec = &request.spec;
    assert!(
        spec.command.is_some() != spec.argv.is_some(),
        "command and argv: {spec:?}"
    );
    assert!((1..=7 * 24 * 3600).contains(&spec.timeout_s));
    assert!(
        (1..=64).contains(&request.lane.len())
            && request
                .lane
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
        "lane {:?}",
        request.lane
    );
    if let Some(node) = node {
        assert_eq!(request.target_text, node);
    }
    assert!(!(request.stdin.is_some() && request.stdin_stream));
    if body.len() <= EXEC_BODY {
        let message = Message::Exec {
            id: 1,
            job: "f".repeat(32),
            spec: spec.clone(),
        };
        let frame = message
            .encode_body()
            .expect("an exec body within the route's limit fits one frame");
        assert_eq!(
            Message::decode(&frame).expect("an Exec frame decodes"),
            message
        );
    }
});
