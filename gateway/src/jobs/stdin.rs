//! A command's standard input on its way to the node: fixed bytes from the request, or a stream
//! from `PUT /api/v1/jobs/{id}/stdin`, sent within the credit the agent grants.

use burrow_core::protocol::{stream, INITIAL_WINDOW, MAX_CHUNK};
use crossbeam_channel::{Receiver, RecvError};

use crate::bus::Request;

enum Source {
    /// Everything is in `pending`.
    Fixed,
    /// More comes on the channel; its end (sender dropped) is the end of input.
    Stream(Receiver<Vec<u8>>),
}

pub struct Feed {
    pending: Vec<u8>,
    sent: usize,
    source: Source,
    credit: u64,
    ended: bool,
}

impl Feed {
    pub fn fixed(data: Vec<u8>) -> Feed {
        Feed::new(data, Source::Fixed)
    }

    pub fn stream(rx: Receiver<Vec<u8>>) -> Feed {
        Feed::new(Vec::new(), Source::Stream(rx))
    }

    fn new(pending: Vec<u8>, source: Source) -> Feed {
        Feed {
            pending,
            sent: 0,
            source,
            credit: u64::from(INITIAL_WINDOW),
            ended: false,
        }
    }

    /// The agent took `bytes` more.
    pub fn credit(&mut self, bytes: u32) {
        self.credit += u64::from(bytes);
    }

    /// Sends what is pending within the credit; the end of input once all is sent.
    pub fn pump(&mut self, request: &Request) {
        if self.ended {
            return;
        }
        while self.sent < self.pending.len() && self.credit > 0 {
            let n = (self.pending.len() - self.sent)
                .min(MAX_CHUNK)
                .min(self.credit as usize);
            let chunk = self.pending[self.sent..self.sent + n].to_vec();
            if request.send_data(stream::STDIN, chunk).is_err() {
                return;
            }
            self.sent += n;
            self.credit -= n as u64;
        }
        if self.sent == self.pending.len() {
            self.pending.clear();
            self.sent = 0;
            if matches!(self.source, Source::Fixed) {
                self.ended = true;
                let _ = request.send_eof(stream::STDIN);
            }
        }
    }

    /// The channel to wait on for more input: only when everything pending is sent and the agent
    /// would take more (so a slow command paces the uploader).
    pub fn wants(&self) -> Option<&Receiver<Vec<u8>>> {
        match &self.source {
            Source::Stream(rx) if !self.ended && self.pending.is_empty() && self.credit > 0 => {
                Some(rx)
            }
            _ => None,
        }
    }

    /// What the channel gave: more input, or its end.
    pub fn got(&mut self, chunk: Result<Vec<u8>, RecvError>, request: &Request) {
        match chunk {
            Ok(data) => self.pending = data,
            Err(RecvError) => {
                self.ended = true;
                let _ = request.send_eof(stream::STDIN);
            }
        }
    }
}
