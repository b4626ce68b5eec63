//! Message ⇄ frame body bytes, and the plaintext framing that only `Hello` uses. Sealing is
//! [`crate::secure`]'s job; this module never sees a key.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::{Message, Purpose, Role, MAX_FRAME, VERSION};
use crate::error::{Error, Result};

mod kind {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const EXEC: u8 = 3;
    pub const OPEN: u8 = 4;
    pub const DATA: u8 = 5;
    pub const CREDIT: u8 = 6;
    pub const EOF: u8 = 7;
    pub const RESET: u8 = 8;
    pub const RESIZE: u8 = 9;
    pub const SIGNAL: u8 = 10;
    pub const EXIT: u8 = 11;
    pub const FAILED: u8 = 12;
    pub const CANCEL: u8 = 13;
    pub const HEARTBEAT: u8 = 14;
    pub const BYE: u8 = 15;
    pub const PING: u8 = 16;
    pub const PONG: u8 = 17;
    pub const DONE: u8 = 18;
    pub const UNKNOWN: u8 = 19;
}

/// Length of a `Hello` payload: version, role, identity key, ephemeral key, nonce.
const HELLO_LEN: usize = 2 + 1 + 32 + 32 + 32;

/// The payload of `Bye` and `Unknown`: a code and a reason.
#[derive(Serialize, Deserialize)]
struct ByeBody {
    code: String,
    reason: String,
}

impl Message {
    /// Encodes the message as a frame body (`u8 kind | u32 id | payload`), refusing one above
    /// [`MAX_FRAME`] with [`Error::TooLarge`], so nothing is ever sent that the peer would refuse.
    pub fn encode_body(&self) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(16);
        let head = |b: &mut Vec<u8>, kind: u8, id: u32| {
            b.push(kind);
            b.extend_from_slice(&id.to_be_bytes());
        };
        match self {
            Message::Hello {
                version,
                role,
                key,
                ephemeral,
                nonce,
            } => {
                head(&mut b, kind::HELLO, 0);
                b.extend_from_slice(&version.to_be_bytes());
                b.push(role_byte(*role));
                b.extend_from_slice(key);
                b.extend_from_slice(ephemeral);
                b.extend_from_slice(nonce);
            }
            Message::Auth { signature } => {
                head(&mut b, kind::AUTH, 0);
                b.extend_from_slice(signature);
            }
            Message::Exec { id, job, spec } => {
                head(&mut b, kind::EXEC, *id);
                let len = u8::try_from(job.len()).map_err(|_| Error::TooLarge {
                    what: "job id",
                    size: job.len(),
                    max: 255,
                })?;
                b.push(len);
                b.extend_from_slice(job.as_bytes());
                serde_json::to_writer(&mut b, spec).expect("wire types serialize");
            }
            Message::Open {
                id,
                stream,
                purpose,
                params,
            } => {
                head(&mut b, kind::OPEN, *id);
                b.extend_from_slice(&stream.to_be_bytes());
                b.push(purpose_byte(*purpose));
                b.extend_from_slice(params.as_bytes());
            }
            Message::Data { id, stream, data } => {
                // Sized up front: this is the bulk path.
                b.reserve(4 + data.len());
                head(&mut b, kind::DATA, *id);
                b.extend_from_slice(&stream.to_be_bytes());
                b.extend_from_slice(data);
            }
            Message::Credit { id, stream, bytes } => {
                head(&mut b, kind::CREDIT, *id);
                b.extend_from_slice(&stream.to_be_bytes());
                b.extend_from_slice(&bytes.to_be_bytes());
            }
            Message::Eof { id, stream } => {
                head(&mut b, kind::EOF, *id);
                b.extend_from_slice(&stream.to_be_bytes());
            }
            Message::Reset { id, stream, reason } => {
                head(&mut b, kind::RESET, *id);
                b.extend_from_slice(&stream.to_be_bytes());
                b.extend_from_slice(reason.as_bytes());
            }
            Message::Resize { id, rows, cols } => {
                head(&mut b, kind::RESIZE, *id);
                b.extend_from_slice(&rows.to_be_bytes());
                b.extend_from_slice(&cols.to_be_bytes());
            }
            Message::Signal { id, signal } => {
                head(&mut b, kind::SIGNAL, *id);
                b.extend_from_slice(&signal.to_be_bytes());
            }
            Message::Exit { id, status } => {
                head(&mut b, kind::EXIT, *id);
                serde_json::to_writer(&mut b, status).expect("wire types serialize");
            }
            Message::Failed { id, message } => {
                head(&mut b, kind::FAILED, *id);
                b.extend_from_slice(message.as_bytes());
            }
            Message::Cancel { id } => head(&mut b, kind::CANCEL, *id),
            Message::Done { id } => head(&mut b, kind::DONE, *id),
            Message::Unknown { id, code, reason } => {
                head(&mut b, kind::UNKNOWN, *id);
                let body = ByeBody {
                    code: code.clone(),
                    reason: reason.clone(),
                };
                serde_json::to_writer(&mut b, &body).expect("wire types serialize");
            }
            Message::Heartbeat(beat) => {
                head(&mut b, kind::HEARTBEAT, 0);
                serde_json::to_writer(&mut b, beat).expect("wire types serialize");
            }
            Message::Bye { code, reason } => {
                head(&mut b, kind::BYE, 0);
                let body = ByeBody {
                    code: code.clone(),
                    reason: reason.clone(),
                };
                serde_json::to_writer(&mut b, &body).expect("wire types serialize");
            }
            Message::Ping(v) => {
                head(&mut b, kind::PING, 0);
                b.extend_from_slice(&v.to_be_bytes());
            }
            Message::Pong(v) => {
                head(&mut b, kind::PONG, 0);
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        if b.len() > MAX_FRAME {
            return Err(Error::TooLarge {
                what: self.kind_name(),
                size: b.len(),
                max: MAX_FRAME,
            });
        }
        Ok(b)
    }

    /// Decodes one frame body (everything after the length prefix, after opening).
    pub fn decode(body: &[u8]) -> Result<Message> {
        if body.len() < 5 {
            return Err(proto("frame shorter than its header"));
        }
        let kind = body[0];
        let id = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes"));
        let p = &body[5..];
        let msg = match kind {
            kind::HELLO => {
                // The version first, so an old or future peer is told what is wrong, not "bad length".
                let version = u16::from_be_bytes(fixed(p.get(..2).unwrap_or(p), "Hello")?);
                if version != VERSION {
                    return Err(proto(format!(
                        "peer speaks protocol version {version}; this build speaks only {VERSION} \
                         (no downgrade, no compatibility with other versions)"
                    )));
                }
                if p.len() != HELLO_LEN {
                    return Err(proto("Hello has the wrong length"));
                }
                Message::Hello {
                    version,
                    role: match p[2] {
                        1 => Role::Gateway,
                        2 => Role::Agent,
                        other => return Err(proto(format!("unknown role {other}"))),
                    },
                    key: fixed(&p[3..35], "Hello")?,
                    ephemeral: fixed(&p[35..67], "Hello")?,
                    nonce: fixed(&p[67..99], "Hello")?,
                }
            }
            kind::AUTH => Message::Auth {
                signature: fixed(p, "Auth")?,
            },
            kind::EXEC => {
                let (&len, rest) = p.split_first().ok_or_else(|| proto("empty Exec"))?;
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(proto("Exec job id runs past the frame"));
                }
                Message::Exec {
                    id,
                    job: text(&rest[..len], "Exec job id")?,
                    spec: from_json(&rest[len..], "Exec")?,
                }
            }
            kind::OPEN => {
                let (stream, rest) = stream_of(p, "Open")?;
                let (&purpose, params) = rest.split_first().ok_or_else(|| proto("short Open"))?;
                Message::Open {
                    id,
                    stream,
                    purpose: purpose_of(purpose),
                    params: text(params, "Open params")?,
                }
            }
            kind::DATA => {
                let (stream, data) = stream_of(p, "Data")?;
                Message::Data {
                    id,
                    stream,
                    data: data.to_vec(),
                }
            }
            kind::CREDIT => {
                let (stream, rest) = stream_of(p, "Credit")?;
                Message::Credit {
                    id,
                    stream,
                    bytes: u32::from_be_bytes(fixed(rest, "Credit")?),
                }
            }
            kind::EOF => Message::Eof {
                id,
                stream: u32::from_be_bytes(fixed(p, "Eof")?),
            },
            kind::RESET => {
                let (stream, reason) = stream_of(p, "Reset")?;
                Message::Reset {
                    id,
                    stream,
                    reason: text(reason, "Reset reason")?,
                }
            }
            kind::RESIZE => {
                let [r0, r1, c0, c1] = fixed(p, "Resize")?;
                Message::Resize {
                    id,
                    rows: u16::from_be_bytes([r0, r1]),
                    cols: u16::from_be_bytes([c0, c1]),
                }
            }
            kind::SIGNAL => Message::Signal {
                id,
                signal: i32::from_be_bytes(fixed(p, "Signal")?),
            },
            kind::EXIT => Message::Exit {
                id,
                status: from_json(p, "Exit")?,
            },
            kind::FAILED => Message::Failed {
                id,
                message: text(p, "Failed message")?,
            },
            kind::CANCEL if p.is_empty() => Message::Cancel { id },
            kind::CANCEL => return Err(proto("Cancel carries a payload")),
            kind::DONE if p.is_empty() => Message::Done { id },
            kind::DONE => return Err(proto("Done carries a payload")),
            kind::UNKNOWN => {
                let body: ByeBody = from_json(p, "Unknown")?;
                Message::Unknown {
                    id,
                    code: body.code,
                    reason: body.reason,
                }
            }
            kind::HEARTBEAT => Message::Heartbeat(from_json(p, "Heartbeat")?),
            kind::BYE => {
                let body: ByeBody = from_json(p, "Bye")?;
                Message::Bye {
                    code: body.code,
                    reason: body.reason,
                }
            }
            kind::PING => Message::Ping(u64::from_be_bytes(fixed(p, "Ping")?)),
            kind::PONG => Message::Pong(u64::from_be_bytes(fixed(p, "Pong")?)),
            other => return Err(proto(format!("unknown frame kind {other}"))),
        };
        Ok(msg)
    }
}

/// Writes one message in a plaintext frame and flushes. Only `Hello` travels like this; everything
/// after it is sealed ([`crate::secure::Sealer`]).
pub fn write_plain<W: Write + ?Sized>(writer: &mut W, message: &Message) -> Result<()> {
    let body = message.encode_body()?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    writer
        .write_all(&frame)
        .and_then(|()| writer.flush())
        .map_err(|e| Error::io("writing frame", e))
}

/// Reads one plaintext frame body of at most `max` bytes (checked before allocating);
/// `Err(Error::Closed)` on a clean end of stream before the frame.
pub fn read_plain<R: Read + ?Sized>(reader: &mut R, max: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_full(reader, &mut len, true)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(proto(format!(
            "frame of {len} bytes exceeds the {max} byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    read_full(reader, &mut body, false)?;
    Ok(body)
}

fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8], at_boundary: bool) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_boundary => return Err(Error::Closed),
            Ok(0) => return Err(proto("stream ended inside a frame")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading frame", e)),
        }
    }
    Ok(())
}

pub(crate) fn role_byte(role: Role) -> u8 {
    match role {
        Role::Gateway => 1,
        Role::Agent => 2,
    }
}

fn purpose_byte(purpose: Purpose) -> u8 {
    match purpose {
        Purpose::Stdin => 0,
        Purpose::Stdout => 1,
        Purpose::Stderr => 2,
        Purpose::File => 3,
        Purpose::Service => 4,
        Purpose::Other(b) => b,
    }
}

fn purpose_of(byte: u8) -> Purpose {
    match byte {
        0 => Purpose::Stdin,
        1 => Purpose::Stdout,
        2 => Purpose::Stderr,
        3 => Purpose::File,
        4 => Purpose::Service,
        other => Purpose::Other(other),
    }
}

fn fixed<const N: usize>(p: &[u8], what: &str) -> Result<[u8; N]> {
    p.try_into()
        .map_err(|_| proto(format!("{what} payload is not {N} bytes")))
}

fn stream_of<'a>(p: &'a [u8], what: &str) -> Result<(u32, &'a [u8])> {
    if p.len() < 4 {
        return Err(proto(format!("{what} has no stream id")));
    }
    let (s, rest) = p.split_at(4);
    Ok((u32::from_be_bytes(fixed(s, what)?), rest))
}

fn text(p: &[u8], what: &str) -> Result<String> {
    String::from_utf8(p.to_vec()).map_err(|_| proto(format!("{what} is not UTF-8")))
}

fn from_json<T: for<'de> Deserialize<'de>>(payload: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| proto(format!("bad {what} payload: {e}")))
}

fn proto(message: impl Into<String>) -> Error {
    Error::Protocol(message.into())
}
