//! The byte-stream face of one SSH channel, as other threads see it.
//!
//! A [`Stream`] never touches libssh2: its bytes travel through bounded crossbeam channels to and from
//! the pump thread, which alone owns the session (see `pump.rs`). Both directions are bounded, so a slow
//! reader stalls the SSH window (and thus the sender on the gateway side) instead of growing a buffer,
//! and a fast writer blocks instead of queueing unbounded output.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Largest chunk handed between a stream and the pump (libssh2 writes at most 32700 bytes per call).
pub(super) const CHUNK: usize = 32 * 1024;
/// Chunks buffered per direction per stream: 256 KiB each way on top of the SSH window.
const QUEUE_CHUNKS: usize = 8;

/// What writers send to the pump.
pub(super) enum Out {
    Data(Vec<u8>),
    /// `StreamWriter::close`: send EOF after the data queued before it.
    #[allow(
        dead_code,
        reason = "sent by StreamWriter::close, which the agent does not call yet"
    )]
    Eof,
}

/// Flags one channel's stream halves and its pump-side state share.
#[derive(Default)]
pub(super) struct ChanShared {
    /// The pump holds a chunk the reader had no room for; the reader wakes the pump after making room.
    pub(super) stalled: AtomicBool,
    /// The reader half is gone: the pump discards inbound data and may close the channel.
    pub(super) reader_gone: AtomicBool,
    /// The channel or session is finished (remote closed it, or the session died): writes fail.
    pub(super) broken: AtomicBool,
    /// A writer called `close`: later writes from other clones fail instead of being dropped silently.
    pub(super) eof_requested: AtomicBool,
}

/// Wakes the pump out of `poll(2)` by writing to its wake pipe; cheap to clone and to call often.
#[derive(Clone)]
pub(super) struct Waker(Arc<WakerInner>);

struct WakerInner {
    pipe: UnixStream,
    /// Set by `wake`, cleared by the pump before it scans its queues: at most one byte in flight.
    pending: AtomicBool,
}

impl Waker {
    /// `pipe` is the non-blocking write end of the pump's wake pair.
    pub(super) fn new(pipe: UnixStream) -> Waker {
        Waker(Arc::new(WakerInner {
            pipe,
            pending: AtomicBool::new(false),
        }))
    }

    pub(super) fn wake(&self) {
        if !self.0.pending.swap(true, Ordering::AcqRel) {
            // A full pipe already wakes the pump; a closed one means the pump is gone. Neither matters.
            let _ = (&self.0.pipe).write(&[1]);
        }
    }

    /// Called by the pump before it looks at its queues, so a wake after that point writes a byte again.
    pub(super) fn clear(&self) {
        self.0.pending.store(false, Ordering::Release);
    }
}

/// One SSH channel (a forwarded connection or a direct-tcpip channel) as a byte stream.
///
/// `Read` returns `Ok(0)` at EOF: the peer finished sending, or the session died.
pub struct Stream {
    reader: StreamReader,
    writer: StreamWriter,
}

/// The reading half of a [`Stream`].
pub struct StreamReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    timeout: Option<Duration>,
    shared: Arc<ChanShared>,
    waker: Waker,
}

/// The writing half of a [`Stream`]; clones share the channel and may be used from several threads.
#[derive(Clone)]
pub struct StreamWriter {
    tx: Sender<Out>,
    shared: Arc<ChanShared>,
    waker: Waker,
}

/// The pump's ends of a new stream's queues.
pub(super) struct PumpEnds {
    pub(super) inbound: Sender<Vec<u8>>,
    pub(super) outbound: Receiver<Out>,
    pub(super) shared: Arc<ChanShared>,
}

/// A new stream and the pump's ends of its queues.
pub(super) fn pair(waker: &Waker) -> (Stream, PumpEnds) {
    let (in_tx, in_rx) = crossbeam_channel::bounded(QUEUE_CHUNKS);
    let (out_tx, out_rx) = crossbeam_channel::bounded(QUEUE_CHUNKS);
    let shared = Arc::new(ChanShared::default());
    let stream = Stream {
        reader: StreamReader {
            rx: in_rx,
            chunk: Vec::new(),
            pos: 0,
            timeout: None,
            shared: shared.clone(),
            waker: waker.clone(),
        },
        writer: StreamWriter {
            tx: out_tx,
            shared: shared.clone(),
            waker: waker.clone(),
        },
    };
    let ends = PumpEnds {
        inbound: in_tx,
        outbound: out_rx,
        shared,
    };
    (stream, ends)
}

impl Stream {
    /// `Read` fails with `io::ErrorKind::TimedOut` when no byte arrived within `t` (`None`: wait forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.reader.set_read_timeout(t);
    }

    /// Splits into a reader and a cloneable writer usable from several threads.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl StreamReader {
    /// `Read` fails with `io::ErrorKind::TimedOut` when no byte arrived within `t` (`None`: wait forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.chunk.len() {
            let next = match self.timeout {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => self.rx.recv_timeout(t),
            };
            match next {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                // The pump drops its sender at EOF and when the session dies.
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "timed out reading from the SSH channel",
                    ))
                }
            }
            if self.shared.stalled.swap(false, Ordering::AcqRel) {
                self.waker.wake();
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.shared.reader_gone.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl StreamWriter {
    /// Sends EOF once the data written so far is out; later writes fail with `BrokenPipe`. The channel
    /// is closed once the reading side has also seen EOF (or was dropped).
    #[allow(
        dead_code,
        reason = "required API for half-closing; the agent does not call it yet"
    )]
    pub fn close(&self) {
        if !self.shared.eof_requested.swap(true, Ordering::AcqRel) {
            // Disconnected means the channel is already gone, which is what we asked for.
            let _ = self.tx.send(Out::Eof);
            self.waker.wake();
        }
    }

    fn broken_pipe(&self) -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the SSH channel is closed")
    }
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shared.broken.load(Ordering::Acquire)
            || self.shared.eof_requested.load(Ordering::Acquire)
        {
            return Err(self.broken_pipe());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(CHUNK);
        // Blocks while the pump is CHUNK * QUEUE_CHUNKS behind; the pump drops the receiver when the
        // channel or session ends, which unblocks us with an error.
        if self.tx.send(Out::Data(buf[..n].to_vec())).is_err() {
            return Err(self.broken_pipe());
        }
        self.waker.wake();
        Ok(n)
    }

    /// Data is handed to the pump by `write`; there is nothing to flush here.
    fn flush(&mut self) -> io::Result<()> {
        if self.shared.broken.load(Ordering::Acquire) {
            return Err(self.broken_pipe());
        }
        Ok(())
    }
}
