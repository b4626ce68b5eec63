//! One channel's state machine, driven by the pump thread (`pump.rs`, which explains the libssh2 rules).
//!
//! A [`Chan`] moves bytes between an ssh2 `Channel` and the queues of its [`Stream`](super::Stream), and
//! decides when the channel is finished: EOF sent once the writers are done, EOF or a close seen from
//! the peer (or the reader gone), and no half-sent packet of ours left inside libssh2. Only then does
//! the pump `close()` it. Also here: how libssh2's error codes are read.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ssh2::{BlockDirections, Channel, ErrorCode, Session};

use super::stream::{ChanShared, Out, PumpEnds, CHUNK};

const EAGAIN: i32 = -37;
const INVAL: i32 = -34;
/// Reads per channel per turn: keeps one busy channel from starving the others.
const READS_PER_TURN: usize = 8;
/// Bytes written per channel per turn, for the same reason.
const WRITE_BUDGET: usize = 256 * 1024;

/// A failed libssh2 call on one channel; the pump decides whether the whole session is gone.
pub(super) enum Failure {
    Io(io::Error),
    Ssh(ssh2::Error),
}

pub(super) fn code_of(e: &ssh2::Error) -> i32 {
    match e.code() {
        ErrorCode::Session(code) => code,
        ErrorCode::SFTP(_) => 0,
    }
}

pub(super) fn is_eagain(e: &ssh2::Error) -> bool {
    code_of(e) == EAGAIN
}

/// libssh2 codes after which the transport is unusable: socket errors, protocol or crypto failure,
/// a disconnect message from the server.
pub(super) fn is_fatal(code: i32) -> bool {
    matches!(
        code,
        -1 | -2 | -3 | -4 | -5 | -7 | -8 | -9 | -12 | -13 | -14 | -30 | -43 | -44 | -45 | -52
    )
}

pub(super) fn describe(code: i32) -> &'static str {
    match code {
        -43 => "the connection was closed",
        -13 => "the server disconnected",
        -7 => "sending failed",
        -4 | -12 | -44 | -52 => "the encrypted stream is corrupt",
        -14 => "protocol error",
        _ => "transport failure",
    }
}

/// libssh2 holds a half-sent packet (its outbound block flag is set only then, and cleared once it
/// is out). Whose packet it is cannot be asked, so a blocked call counts as holding it.
fn send_pending(session: &Session) -> bool {
    matches!(
        session.block_directions(),
        BlockDirections::Outbound | BlockDirections::Both
    )
}

/// Where a channel's EOF stands; once sent half way, only the same call may finish it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EofState {
    NotSent,
    InFlight,
    Sent,
}

/// The pump's half of one channel.
pub(super) struct Chan {
    pub(super) ch: Channel,
    pub(super) shared: Arc<ChanShared>,
    /// `None` once EOF is delivered or the reader is gone (then inbound data is discarded).
    inbound: Option<Sender<Vec<u8>>>,
    /// Data read from the channel for which the reader had no room: no more reads until it is taken.
    held: Option<Vec<u8>>,
    remote_eof: bool,
    /// Consecutive `Ok(0)` reads without libssh2 reporting EOF (see `pump_in`).
    zero_reads: u8,
    /// `None` once the writers are finished (EOF requested, all dropped) or the channel broke.
    outbound: Option<Receiver<Out>>,
    sending: Vec<u8>,
    sent: usize,
    /// The last write would block with a packet half sent: only another write here can finish it.
    send_blocked: bool,
    /// Likewise for the window adjust a read sends: only another read here can finish it.
    read_blocked: bool,
    eof_wanted: bool,
    eof: EofState,
    remote_closed: bool,
}

impl Chan {
    pub(super) fn new(ch: Channel, ends: PumpEnds) -> Chan {
        Chan {
            ch,
            shared: ends.shared,
            inbound: Some(ends.inbound),
            held: None,
            remote_eof: false,
            zero_reads: 0,
            outbound: Some(ends.outbound),
            sending: Vec::new(),
            sent: 0,
            send_blocked: false,
            read_blocked: false,
            eof_wanted: false,
            eof: EofState::NotSent,
            remote_closed: false,
        }
    }

    /// Whether this turn's `pump` reads from the socket (any read, or a write with data to send).
    pub(super) fn reads_transport(&self) -> bool {
        (self.held.is_none() && (!self.remote_eof || self.read_blocked))
            || self.sent < self.sending.len()
    }

    pub(super) fn pump(
        &mut self,
        session: &Session,
        buf: &mut [u8],
        heard: &mut Instant,
    ) -> Result<bool, Failure> {
        let mut progress = self.pump_in(session, buf, heard)?;
        progress |= self.pump_out(session)?;
        progress |= self.watch_remote_close()?;
        Ok(progress)
    }

    fn pump_in(
        &mut self,
        session: &Session,
        buf: &mut [u8],
        heard: &mut Instant,
    ) -> Result<bool, Failure> {
        let mut progress = false;
        if let Some(chunk) = self.held.take() {
            if !self.deliver(chunk) {
                return Ok(false);
            }
            progress = true;
        }
        // After EOF, read only to finish a window adjust a blocked read left half sent.
        if self.remote_eof && !self.read_blocked {
            return Ok(progress);
        }
        for _ in 0..READS_PER_TURN {
            match self.ch.read(buf) {
                Ok(0) => {
                    self.read_blocked = false;
                    // EOF, except that a read which completed a key re-exchange also returns 0 once;
                    // a second 0 in a row without EOF means the peer closed without sending EOF.
                    self.zero_reads += 1;
                    if self.ch.eof() || self.zero_reads >= 2 {
                        self.remote_eof = true;
                        self.inbound = None;
                        *heard = Instant::now();
                    }
                    return Ok(true);
                }
                Ok(n) => {
                    self.zero_reads = 0;
                    self.read_blocked = false;
                    progress = true;
                    *heard = Instant::now();
                    if !self.deliver(buf[..n].to_vec()) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.zero_reads = 0;
                    self.read_blocked = send_pending(session);
                    break;
                }
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        Ok(progress)
    }

    /// Hands a chunk to the reader; false if its queue is full (the chunk is then held).
    fn deliver(&mut self, chunk: Vec<u8>) -> bool {
        if self.shared.reader_gone.load(Ordering::Acquire) {
            self.inbound = None;
        }
        let Some(tx) = &self.inbound else {
            return true; // nobody reads: discard, but keep the window moving
        };
        let chunk = match tx.try_send(chunk) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => {
                self.inbound = None;
                return true;
            }
            Err(TrySendError::Full(chunk)) => chunk,
        };
        // Ask the reader to wake us when it makes room, then look again in case it just did.
        self.shared.stalled.store(true, Ordering::Release);
        match tx.try_send(chunk) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => {
                self.inbound = None;
                true
            }
            Err(TrySendError::Full(chunk)) => {
                self.held = Some(chunk);
                false
            }
        }
    }

    /// Takes the next data from the writers, merging small writes into one packet.
    fn refill(&mut self) -> bool {
        self.sending.clear();
        self.sent = 0;
        while self.sending.len() < CHUNK {
            let Some(rx) = &self.outbound else { break };
            match rx.try_recv() {
                Ok(Out::Data(data)) if self.sending.is_empty() => self.sending = data,
                Ok(Out::Data(data)) => self.sending.extend_from_slice(&data),
                Ok(Out::Eof) | Err(TryRecvError::Disconnected) => {
                    self.outbound = None;
                    self.eof_wanted = true;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        !self.sending.is_empty()
    }

    fn pump_out(&mut self, session: &Session) -> Result<bool, Failure> {
        let mut progress = false;
        let mut budget = WRITE_BUDGET;
        loop {
            // Nobody will read it; finish only a packet libssh2 may hold half sent.
            if self.remote_closed && !self.send_blocked {
                self.sending.clear();
                self.sent = 0;
            }
            if self.sent == self.sending.len() && (self.remote_closed || !self.refill()) {
                break;
            }
            match self.ch.write(&self.sending[self.sent..]) {
                // The peer's window is full; its window adjust makes the socket readable.
                Ok(0) => {
                    self.send_blocked = false;
                    break;
                }
                Ok(n) => {
                    self.send_blocked = false;
                    self.sent += n;
                    progress = true;
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Without a half-sent packet this is a full window or another call's packet.
                    self.send_blocked = send_pending(session);
                    break;
                }
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        let flushed = self.sent == self.sending.len();
        let want_eof = self.eof_wanted && flushed && !self.remote_closed;
        if (want_eof && self.eof != EofState::Sent) || self.eof == EofState::InFlight {
            match self.ch.send_eof() {
                Ok(()) => {
                    self.eof = EofState::Sent;
                    progress = true;
                }
                Err(e) if is_eagain(&e) => self.eof = EofState::InFlight,
                Err(e) => return Err(Failure::Ssh(e)),
            }
        }
        Ok(progress)
    }

    /// After the peer's EOF it may also close the channel; writes would then vanish into a window that
    /// never reopens, so notice the close and fail the writers.
    fn watch_remote_close(&mut self) -> Result<bool, Failure> {
        if !self.remote_eof || self.remote_closed || self.eof == EofState::Sent {
            return Ok(false);
        }
        match self.ch.wait_close() {
            Ok(()) => {}
            Err(e) if is_eagain(&e) => return Ok(false),
            // wait_close insists on EOF first; a close without EOF lands here.
            Err(e) if code_of(&e) == INVAL => {}
            Err(e) => return Err(Failure::Ssh(e)),
        }
        self.fail();
        Ok(true)
    }

    /// The channel is finished from the peer's side (closed, or a channel-level error).
    pub(super) fn fail(&mut self) {
        self.remote_closed = true;
        self.remote_eof = true;
        self.inbound = None;
        self.held = None;
        self.outbound = None;
        self.shared.broken.store(true, Ordering::Release);
    }

    /// A call here stopped with a packet half sent: the pump must wake when the socket takes more.
    /// (libssh2's own flag is not enough: a write into a full window overwrites it.)
    pub(super) fn wants_out(&self) -> bool {
        self.send_blocked || self.read_blocked || self.eof == EofState::InFlight
    }

    /// Both directions are done and no half-sent packet is ours: time to close.
    pub(super) fn finished(&self) -> bool {
        let in_done = (self.remote_eof || self.shared.reader_gone.load(Ordering::Acquire))
            && !self.read_blocked;
        let out_done = self.eof == EofState::Sent
            || (self.remote_closed && !self.send_blocked && self.eof != EofState::InFlight);
        in_done && out_done
    }

    /// Ends the stream side (reader EOF, writers BrokenPipe) and returns the channel for `close()`.
    pub(super) fn retire(self) -> Channel {
        self.shared.broken.store(true, Ordering::Release);
        self.ch
    }
}
