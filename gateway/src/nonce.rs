//! Server nonces for pairing that the gateway does not have to remember.
//!
//! `/api/v1/agent/hello` used to keep every nonce it handed out in a table capped at 10,000: one
//! client calling hello in a loop filled it and locked every node out of pairing. A nonce is now
//! `issued_at (8 bytes, unix seconds) ‖ salt (8 random bytes) ‖ HMAC-SHA256(key, issued_at ‖ salt)`
//! truncated to 16 bytes, under a key drawn at start and never stored: the gateway checks the MAC and
//! the age, and keeps nothing per nonce, so no number of hellos costs it memory. (A restart draws a
//! new key; an agent mid-pairing then asks hello again, as it does after any refusal.)
//!
//! Why a nonce may be used more than once inside its window, and why that is harmless: the pairing
//! request is signed by the node's key over the server nonce and the request bytes, so a signature is
//! good only with this gateway's nonce and only for [`WINDOW`]. To replay one inside the window, a
//! third party needs the signed bytes, which travel in the agent's SSH session to sshd and then over
//! loopback TCP from sshd to the API: readable by root only (an unprivileged local user cannot sniff
//! loopback, and a process squatting the API port while the gateway is down gets no signed request,
//! because the agent checks the gateway's signature on hello first). Whoever can read them already
//! holds what they carry: a first-contact request carries the join secret in clear. A replay then
//! repeats the same request for the same key: a first contact becomes "known key asking again" (it
//! does not consume a second use of the token), and a known key's request only refreshes what the node
//! reported, with the same values. The replayer does get the answer (for an approved node, a node
//! token), but reading the request took root on the gateway host, which holds the gateway key anyway.
//! The client nonce is not in the MAC because the pairing request does
//! not carry it; the gateway's hello signature binds the two nonces for the agent.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a nonce is good for after hello. An agent signs and sends its request right after hello.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Tolerated clock step between issue and check (the wall clock may be adjusted backwards).
const SKEW: u64 = 5;

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks server nonces.
pub struct ServerNonces {
    key: [u8; 32],
}

impl ServerNonces {
    /// A fresh key for this run of the gateway.
    pub fn new() -> ServerNonces {
        ServerNonces {
            key: burrow_core::random_bytes(),
        }
    }

    /// A nonce issued at `now` (unix seconds).
    pub fn issue(&self, now: u64) -> [u8; 32] {
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&now.to_be_bytes());
        nonce[8..16].copy_from_slice(&burrow_core::random_bytes::<8>());
        let tag = self.mac(&nonce[..16]).finalize().into_bytes();
        nonce[16..].copy_from_slice(&tag[..16]);
        nonce
    }

    /// Whether `nonce` was issued by this gateway run within [`WINDOW`] before `now`.
    pub fn check(&self, nonce: &[u8; 32], now: u64) -> bool {
        let issued = u64::from_be_bytes(nonce[..8].try_into().expect("8 bytes"));
        let fresh =
            issued <= now.saturating_add(SKEW) && now.saturating_sub(issued) < WINDOW.as_secs();
        // Constant-time comparison of the tag.
        fresh
            && self
                .mac(&nonce[..16])
                .verify_truncated_left(&nonce[16..])
                .is_ok()
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"burrow server nonce v1");
        mac.update(data);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_fresh_nonces_pass_others_fail() {
        let n = ServerNonces::new();
        let t = 1_800_000_000;
        let nonce = n.issue(t);
        assert!(n.check(&nonce, t));
        assert!(n.check(&nonce, t + WINDOW.as_secs() - 1));
        assert!(!n.check(&nonce, t + WINDOW.as_secs()), "expired");
        assert!(!ServerNonces::new().check(&nonce, t), "another key");
        for i in 0..32 {
            let mut bad = nonce;
            bad[i] ^= 1;
            assert!(!n.check(&bad, t), "byte {i} altered");
        }
        // A nonce dated in the future beyond the skew is not accepted.
        assert!(!n.check(&n.issue(t + 60), t));
    }

    /// The nonce table this replaces refused every pairing once 10,000 hellos were in flight.
    #[test]
    fn hellos_leave_nothing_to_fill() {
        let n = ServerNonces::new();
        let t = 1_800_000_000;
        for _ in 0..20_000 {
            n.issue(t);
        }
        assert!(n.check(&n.issue(t), t));
        assert_eq!(std::mem::size_of::<ServerNonces>(), 32);
    }
}
