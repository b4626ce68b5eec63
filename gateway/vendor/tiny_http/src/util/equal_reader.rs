use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// PATCH(unread-body): bytes of an unread body thrown away per read while draining.
const DRAIN_CHUNK: usize = 8 * 1024;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, up to `drain_limit` remaining bytes are read through a small fixed
/// buffer and thrown away; if more remain (or a read failed), the connection is marked for closing
/// through `close_connection`, since the next request would start inside this body.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    // PATCH(unread-body): see the type's doc.
    drain_limit: usize,
    close_connection: Arc<AtomicBool>,
    failed: bool,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(
        reader: R,
        size: usize,
        drain_limit: usize,
        close_connection: Arc<AtomicBool>,
    ) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            drain_limit,
            close_connection,
            failed: false,
        };

        (r, rx)
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            Err(e) => {
                // PATCH(unread-body): after a failed read (e.g. a timeout) the position in the
                // stream is unknown; draining would only wait again.
                self.failed = true;
                Err(e)
            }
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        // PATCH(unread-body): upstream allocated `vec![0; remaining]`, sized by the client's
        // Content-Length: 2^62 aborted the process, 2^64-1 panicked the worker dropping the request.
        // Now a fixed buffer, and at most `drain_limit` bytes: a client announcing more than that
        // and not sending it (or sending it slowly) cannot hold the thread dropping the request.
        if self.size > self.drain_limit || self.failed {
            self.close_connection.store(true, Ordering::Release);
            return;
        }
        let mut buf = [0; DRAIN_CHUNK];
        while self.size > 0 {
            let want = self.size.min(DRAIN_CHUNK);
            match self.reader.read(&mut buf[..want]) {
                Err(e) => {
                    self.close_connection.store(true, Ordering::Release);
                    self.last_read_signal.send(Err(e)).ok();
                    break;
                }
                Ok(0) => {
                    self.close_connection.store(true, Ordering::Release);
                    self.last_read_signal.send(Ok(())).ok();
                    break;
                }
                Ok(other) => {
                    self.size -= other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) =
                EqualReader::new(org_reader.by_ref(), 5, 1024, Default::default());

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) =
                EqualReader::new(org_reader.by_ref(), 5, 1024, Default::default());

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
