//! The gateway ↔ agent wire protocol, version 2: a secure channel spoken over each node's
//! reverse-forwarded port on the gateway host's 127.0.0.1.
//!
//! That port is reachable by every local user of the gateway host, and a reconnecting agent may listen
//! on its second port while someone else holds the first. So the protocol does not trust the path: it
//! authenticates both ends *and binds every later frame to that handshake*. Version 1 authenticated the
//! peers but carried the frames after the handshake in the clear, which let a relay inject `Exec`.
//! burrow is 0.x with no deployed fleets: there is no v1 compatibility, and a peer that offers any
//! version other than [`VERSION`] is refused (no downgrade).
//!
//! # Handshake ([`crate::secure::handshake`])
//!
//! 1. Both ends send [`Message::Hello`] at once, in a plaintext frame: protocol version, role, Ed25519
//!    identity key, a fresh ephemeral X25519 public key and a fresh 32-byte nonce.
//! 2. Each checks the peer's version (exactly [`VERSION`]), role (the other one) and identity key (the
//!    agent accepts only the gateway key pinned at join time, the gateway only the key registered for
//!    the node it dialed) before it computes anything.
//! 3. **Transcript** `T = "burrow-v2-transcript\0" ‖ u32 len ‖ gateway Hello ‖ u32 len ‖ agent Hello`
//!    (the exact frame bodies, so versions, roles, keys and nonces are all in it), `H = SHA-256(T)`.
//! 4. **Key schedule**: `ss = X25519(my ephemeral secret, peer ephemeral public)` (an all-zero result,
//!    from a low-order point, is refused); `HKDF-SHA256(salt = H, ikm = ss)` expanded with
//!    `info = "burrow-v2 gateway->agent" ‖ H` and `"burrow-v2 agent->gateway" ‖ H` gives two 32-byte
//!    ChaCha20-Poly1305 keys, one per direction. The ephemeral secrets are dropped after this.
//! 5. Each sends [`Message::Auth`] as its **first sealed frame**: an Ed25519 signature by its identity
//!    key over `"burrow-v2-auth\0" ‖ role byte ‖ H`. Verifying it proves the peer holds the identity key
//!    *and* took part in this very exchange of ephemeral keys; decrypting it proves it derived the same
//!    session keys.
//!
//! # Sealed framing ([`crate::secure::Sealer`], [`crate::secure::Opener`])
//!
//! ```text
//! plaintext frame (Hello only):  u32 length | body
//! sealed frame (everything else): u32 length | ChaCha20-Poly1305(body) | 16-byte tag
//! body:                           u8 kind | u32 request id | payload
//! ```
//!
//! `length` (big endian) counts everything after itself. A body is at most [`MAX_FRAME`] bytes, so a
//! sealed frame's length is at most `MAX_FRAME + 16`; [`Message::encode_body`] refuses to build a larger
//! one (callers get [`crate::Error::TooLarge`] instead of a frame the peer would refuse). The nonce of
//! the n-th sealed frame in a direction is `0u32 ‖ n as u64` (big endian): a counter, never sent, never
//! reused; a counter that would wrap ends the connection. The 4-byte length prefix is the AEAD's
//! associated data. Hence an altered byte anywhere (prefix, ciphertext or tag), an injected frame, a
//! replayed one, a reordered pair or a frame cut short fails to open, and the receiver drops the
//! connection: nothing that fails to open is ever acted upon.
//!
//! # Requests and streams
//!
//! Requests are multiplexed by request id (chosen by the gateway, non-zero; 0 is for connection-level
//! messages). [`Message::Exec`] carries the request id and the gateway-chosen **job id** (globally
//! unique, what the API shows). Bytes move on **streams** of a request, numbered per request:
//!
//! - Well-known streams, opened by `Exec` itself: [`stream::STDIN`] (gateway → agent, if the spec asks
//!   for one), [`stream::STDOUT`], [`stream::STDERR`] (agent → gateway). Ids below
//!   [`stream::FIRST_OPENED`] are reserved for such streams.
//! - Streams opened with [`Message::Open`] and a [`Purpose`] (a file, a node service, …): the gateway
//!   picks even ids, the agent odd ids, both at least [`stream::FIRST_OPENED`], so they never collide.
//! - [`Message::Data`] carries bytes, [`Message::Eof`] half-closes (the sender sends no more on that
//!   stream; the other direction stays open), [`Message::Reset`] aborts both directions.
//!   [`Message::Resize`] and [`Message::Signal`] act on a request's pty and process.
//! - An exec request ends with exactly one [`Message::Exit`], [`Message::Failed`] or
//!   [`Message::Unknown`] from the agent; [`Message::Cancel`] from the gateway stops it. After an `Exit`
//!   or `Failed`, the gateway sends [`Message::Done`] once the outcome is stored durably; until then the
//!   agent keeps it (in its data dir if the connection drops first).
//!
//! # Jobs outlive connections (at most once)
//!
//! A job id names one command on one node for good. The agent records every job id it accepts
//! durably (in its data dir, bounded) *before* it starts the command, so an `Exec` whose job id it has
//! seen is never run again, whichever connection it comes on. Instead:
//!
//! - the job still runs (its connection dropped, the command went on up to its timeout): the new
//!   request attaches to it; output produced while it was detached (kept, bounded) comes first, then
//!   live output, then the `Exit`;
//! - the job ended and its outcome is still kept (no `Done` came): its kept output and its `Exit` or
//!   `Failed` are sent again on the new request;
//! - the agent cannot say how it ended (outcome no longer kept, or the agent restarted while it ran):
//!   [`Message::Unknown`] with a code of [`unknown`].
//!
//! So a gateway that is unsure whether an `Exec` arrived (a link dropped during delivery, a restart)
//! simply sends it again with the same job id: it runs once, and its outcome reaches the gateway.
//! [`ExecSpec::stdin`] asks for a [`stream::STDIN`]: the gateway sends `Data` on it within credit the
//! agent grants (starting at [`INITIAL_WINDOW`]) and ends it with `Eof`; without it the command's
//! standard input is `/dev/null`.
//!
//! # Files
//!
//! A file transfer is its own request, opened with [`Message::Open`] on stream
//! [`stream::FIRST_OPENED`] with [`Purpose::File`] and JSON params [`FileParams`]:
//!
//! - `put`: the gateway sends the bytes as `Data` on that stream (within credit the agent grants),
//!   then `Eof`; the agent writes a temporary file beside the target, fsyncs and renames it into place
//!   (an interrupted transfer leaves nothing), then answers `Exit` (exit code 0) or `Failed`.
//! - `get`: the agent sends the file as `Data` on that stream (within credit the gateway grants), then
//!   `Eof`, then `Exit`; or `Failed` (not found, not a regular file, unreadable).
//!
//! `Cancel` or `Reset` aborts a transfer (a `put` then leaves nothing behind).
//!
//! # Services
//!
//! A connection to a service the node declared (`agent run --service ssh=127.0.0.1:22`) is its own
//! request, opened with [`Message::Open`] on stream [`stream::FIRST_OPENED`] with
//! [`Purpose::Service`] and JSON params [`ServiceParams`]. That one stream carries bytes both ways,
//! each direction with its own credit (`Data`, `Credit` and `Eof` name the sender's direction):
//!
//! - agent → gateway starts with [`INITIAL_WINDOW`]; gateway → agent starts with **none**: the
//!   agent grants [`INITIAL_WINDOW`] with a `Credit` once it has connected to the service's address.
//!   That first `Credit` is the "connected" answer; the gateway sends nothing before it.
//! - If the agent will not or cannot connect, it answers [`Message::Failed`] instead, the request's
//!   only and last frame, whose message begins `refused (<code>): ` with a code of
//!   [`service_refusal`] (not declared, turned off by the node's owner, too many streams) or
//!   `unreachable: ` (the address refused or timed out).
//! - `Eof` half-closes the sender's direction: the agent shuts down the write half of its socket to
//!   the service when the gateway's `Eof` arrives (after the bytes before it), and sends `Eof` when
//!   the service closes its side. Once both directions have ended, the agent sends `Exit` (exit code
//!   0): the request's last frame.
//! - `Reset` or `Cancel` from the gateway, or `Reset` from the agent (the service reset the
//!   connection, the node's idle timeout for streams expired), aborts both directions; after the
//!   agent's `Reset` nothing more comes on the request.
//!
//! # Terminals
//!
//! An `Exec` whose spec has a [`Tty`] runs the command on a pseudo-terminal of that size, as the
//! leader of a new session with the terminal as its controlling terminal (so Ctrl-C, a `0x03`
//! byte on stdin, interrupts the foreground process group, and job control works). Standard input,
//! output and error all go through the terminal: `STDIN` writes to it, `STDOUT` carries everything
//! it prints, `STDERR` carries nothing. [`Message::Resize`] sets the terminal's size (the session
//! gets `SIGWINCH`); [`Message::Signal`] signals the session's foreground process group. `Eof` on
//! `STDIN` closes nothing (a terminal has no end of input; send the `VEOF` byte, Ctrl-D, instead).
//!
//! # Flow control
//!
//! Every stream direction starts with [`INITIAL_WINDOW`] bytes of credit. A sender never puts more
//! `Data` payload on a stream than the credit it holds; the receiver returns credit with
//! [`Message::Credit`] (per stream) as it hands the bytes on. A chatty command blocks on its own pipe
//! instead of flooding the connection, and other requests on the same node keep flowing. Credit is a
//! `u32` increment per frame and accumulates without limit, so no window size is baked into the wire.
//!
//! # Connection-level messages
//!
//! [`Message::Ping`]/[`Message::Pong`] for liveness (each side pings a quiet peer and drops a connection
//! on which nothing arrived within its bound), [`Message::Heartbeat`] (agent → gateway: version and
//! metrics) and [`Message::Bye`] (gateway → agent: why the gateway ends the link, e.g. [`bye::REVOKED`],
//! after which the agent stops retrying).
//!
//! # What a relay can and cannot do
//!
//! Someone holding the port between the gateway and the agent (a local user of the gateway host) sees
//! the two Hellos (identity keys, ephemeral public keys, nonces), then only ciphertext and frame lengths:
//! how much output flows and when. It cannot read commands or output, cannot inject, replay, reorder,
//! alter or drop a single frame without the connection being dropped (so it cannot forge or suppress a
//! `Cancel` or `Credit` quietly: see liveness), and cannot complete a handshake of its own with either
//! side (it has neither identity key; substituting its own ephemeral keys breaks both signatures). It
//! can always cut the connection, or stall it; both are detected (closed connection, liveness bound).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Heartbeat;

pub(crate) mod codec;
#[cfg(test)]
pub(crate) mod tests;

pub use codec::{read_plain, write_plain};

/// The protocol version sent in `Hello`; peers with any other version are refused.
pub const VERSION: u16 = 2;
/// Largest frame body (kind + id + payload) a peer may send, before sealing.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest output chunk the agent puts in one `Data` frame.
pub const MAX_CHUNK: usize = 32 * 1024;
/// Credit each stream direction starts with.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Stream ids within a request.
pub mod stream {
    /// Gateway → agent: the command's standard input (only if the request asks for one).
    pub const STDIN: u32 = 0;
    /// Agent → gateway: the command's standard output, opened by `Exec`.
    pub const STDOUT: u32 = 1;
    /// Agent → gateway: the command's standard error, opened by `Exec`.
    pub const STDERR: u32 = 2;
    /// The lowest id a `Open` may use; lower ids are well-known streams of the request.
    pub const FIRST_OPENED: u32 = 16;
}

/// Codes of [`Message::Bye`].
pub mod bye {
    /// The node was revoked (removed for good): stop retrying; only a new join brings it back.
    pub const REVOKED: &str = "revoked";
    /// The node was rejected: its key is refused until an operator approves it again, so retry
    /// rarely.
    pub const REJECTED: &str = "rejected";
    /// The gateway is shutting down: retry later.
    pub const SHUTDOWN: &str = "shutdown";
    /// The gateway replaces this link by a newer one of the same node.
    pub const REPLACED: &str = "replaced";
}

/// Codes of [`Message::Unknown`].
pub mod unknown {
    /// The job ran here, but its outcome is no longer kept (evicted by the agent's bounds).
    pub const FORGOTTEN: &str = "forgotten";
    /// The agent stopped (crash, restart) while the job ran; its processes were killed then.
    pub const INTERRUPTED: &str = "interrupted";
}

/// Params of a [`Purpose::File`] stream (JSON in [`Message::Open`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileParams {
    /// `"put"` (gateway → node) or `"get"` (node → gateway).
    pub op: String,
    /// Absolute path on the node.
    pub path: String,
    /// The job this transfer belongs to (for the agent's logs).
    #[serde(default)]
    pub job: String,
    /// `put`: permission bits of the new file (default 0o644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `put`: the exact size that will follow, when known; the agent refuses at once if it cannot
    /// hold it and fails the transfer if a different amount arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Which side of the connection a peer claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The gateway, which sends requests.
    Gateway,
    /// An agent, which serves them.
    Agent,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Gateway => Role::Agent,
            Role::Agent => Role::Gateway,
        }
    }
}

/// What a stream opened with [`Message::Open`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A command's standard input.
    Stdin,
    /// A command's standard output.
    Stdout,
    /// A command's standard error.
    Stderr,
    /// A file's contents (path and mode in the params).
    File,
    /// A connection to a service on the node (address in the params).
    Service,
    /// A purpose this build does not know; the receiver answers with `Reset`.
    Other(u8),
}

/// What to run on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    /// Run by `/bin/sh -c`; exclusive with `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, run without a shell; exclusive with `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the process group after this many seconds.
    pub timeout_s: u64,
    /// The gateway sends the command's standard input on [`stream::STDIN`]; otherwise it reads
    /// `/dev/null`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run the command on a pseudo-terminal of this size (see "Terminals" in the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
}

/// A pseudo-terminal for a command ([`ExecSpec::tty`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tty {
    /// Rows (at least 1).
    pub rows: u16,
    /// Columns (at least 1).
    pub cols: u16,
    /// `TERM` for the command (the agent's default, `xterm-256color`, when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// Params of a [`Purpose::Service`] stream (JSON in [`Message::Open`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceParams {
    /// The service's name, as the node declared it (`agent run --service NAME=ADDR`).
    pub service: String,
}

/// How a [`Message::Failed`] answering a service `Open` begins, so the gateway can tell the
/// caller which it was: `"refused (<code>): <why>"` or `"unreachable: <why>"`.
pub mod service_refusal {
    /// The node declares no service of that name.
    pub const NOT_DECLARED: &str = "not-declared";
    /// The node's owner turned the service (or all services) off in the policy file.
    pub const TURNED_OFF: &str = "turned-off";
    /// The node already carries as many service streams as its owner allows.
    pub const TOO_MANY: &str = "too-many-streams";
    /// Prefix of the message when the agent could not connect to the service's address.
    pub const UNREACHABLE: &str = "unreachable";
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether burrow killed it because `timeout_s` expired.
    pub timed_out: bool,
    /// Wall time from spawn to exit.
    pub duration_ms: u64,
}

/// One protocol message with its request id.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Opens the handshake; the only message sent in a plaintext frame.
    Hello {
        /// Protocol version ([`VERSION`]).
        version: u16,
        /// The sender's role.
        role: Role,
        /// The sender's Ed25519 identity key.
        key: [u8; 32],
        /// The sender's ephemeral X25519 public key, fresh for this connection.
        ephemeral: [u8; 32],
        /// Fresh random nonce.
        nonce: [u8; 32],
    },
    /// The first sealed frame each way: proves the identity key from `Hello` over the transcript.
    Auth {
        /// Ed25519 signature (see the module doc).
        signature: [u8; 64],
    },
    /// Gateway → agent: run a command; opens its `STDOUT` and `STDERR` streams.
    Exec {
        /// Request id.
        id: u32,
        /// The gateway-chosen job id (globally unique; the id the API shows), at most 255 bytes.
        job: String,
        /// What to run.
        spec: ExecSpec,
    },
    /// Opens stream `stream` of request `id`.
    Open {
        /// Request id.
        id: u32,
        /// The new stream's id (even from the gateway, odd from the agent, ≥ `FIRST_OPENED`).
        stream: u32,
        /// What it carries.
        purpose: Purpose,
        /// Purpose-specific parameters (JSON text, possibly empty).
        params: String,
    },
    /// Bytes on a stream, within the credit the sender holds.
    Data {
        /// Request id.
        id: u32,
        /// Stream id.
        stream: u32,
        /// Raw bytes.
        data: Vec<u8>,
    },
    /// More credit for the peer's sending on a stream.
    Credit {
        /// Request id.
        id: u32,
        /// Stream id.
        stream: u32,
        /// Bytes of payload the peer may send in addition.
        bytes: u32,
    },
    /// Half-close: the sender sends no more `Data` on this stream.
    Eof {
        /// Request id.
        id: u32,
        /// Stream id.
        stream: u32,
    },
    /// Aborts a stream in both directions.
    Reset {
        /// Request id.
        id: u32,
        /// Stream id.
        stream: u32,
        /// Why, for humans.
        reason: String,
    },
    /// Gateway → agent: the request's pty has a new size.
    Resize {
        /// Request id.
        id: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Gateway → agent: deliver a signal to the request's process group.
    Signal {
        /// Request id.
        id: u32,
        /// Signal number.
        signal: i32,
    },
    /// Agent → gateway: the command ended; the last frame of a request.
    Exit {
        /// Request id.
        id: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// Agent → gateway: the request could not be carried out (spawn failed, refused by policy).
    Failed {
        /// Request id.
        id: u32,
        /// Why, for humans.
        message: String,
    },
    /// Gateway → agent: stop a request (its process group is killed).
    Cancel {
        /// Request id.
        id: u32,
    },
    /// Gateway → agent: the request's outcome (`Exit` or `Failed`) is stored durably; the agent may
    /// forget it.
    Done {
        /// Request id.
        id: u32,
    },
    /// Agent → gateway: the request's job id ran here before, but how it ended cannot be told (see
    /// [`unknown`]); it will not run again. The last frame of a request.
    Unknown {
        /// Request id.
        id: u32,
        /// One of [`unknown`].
        code: String,
        /// For humans.
        reason: String,
    },
    /// Agent → gateway: version and metrics, on connect and every 30 s.
    Heartbeat(Heartbeat),
    /// Gateway → agent: the gateway ends the link, and why.
    Bye {
        /// Machine-readable reason (see [`bye`]).
        code: String,
        /// For humans.
        reason: String,
    },
    /// Liveness probe; answered with `Pong` carrying the same value.
    Ping(u64),
    /// Answer to `Ping`.
    Pong(u64),
}

impl Message {
    /// The message's kind, for logs and errors (never its payload, which may be megabytes of output).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Auth { .. } => "Auth",
            Message::Exec { .. } => "Exec",
            Message::Open { .. } => "Open",
            Message::Data { .. } => "Data",
            Message::Credit { .. } => "Credit",
            Message::Eof { .. } => "Eof",
            Message::Reset { .. } => "Reset",
            Message::Resize { .. } => "Resize",
            Message::Signal { .. } => "Signal",
            Message::Exit { .. } => "Exit",
            Message::Failed { .. } => "Failed",
            Message::Cancel { .. } => "Cancel",
            Message::Done { .. } => "Done",
            Message::Unknown { .. } => "Unknown",
            Message::Heartbeat(_) => "Heartbeat",
            Message::Bye { .. } => "Bye",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
        }
    }
}
