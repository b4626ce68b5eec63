//! The signed challenges that protect pairing and the agent's API calls over direct-tcpip channels.
//! (The gateway ↔ agent connection's own handshake is [`crate::secure::handshake`].)
//!
//! Each message starts with a domain-separation label, so a signature made for one purpose is useless
//! for any other, and covers a fresh nonce, so a recorded one cannot be replayed.

/// What the gateway signs to prove, over a direct-tcpip channel, that it is the API the agent pinned
/// (before the agent sends a token or a pairing request there).
pub fn api_hello_message(client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
    let mut m = b"burrow-api-hello-v1\0".to_vec();
    m.extend_from_slice(client_nonce);
    m.extend_from_slice(server_nonce);
    m
}

/// What a node signs to prove possession of its key in a pairing request: the gateway's one-time
/// server nonce and the exact request bytes.
pub fn pair_message(server_nonce: &[u8], request: &[u8]) -> Vec<u8> {
    let mut m = b"burrow-pair-v1\0".to_vec();
    m.extend_from_slice(server_nonce);
    m.extend_from_slice(request);
    m
}
