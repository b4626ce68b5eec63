//! The agent's calls to the gateway API, made over a direct-tcpip channel through its SSH session.
//!
//! Every channel starts with `POST /api/v1/agent/hello`: the gateway signs our fresh nonce with the key
//! pinned at join time. Only then does the agent send a token or a pairing request, so a process
//! squatting the API port while the gateway is down learns nothing. Requests are HTTP/1.1 with
//! keep-alive on the one channel; answers are parsed with `httparse`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::api::{HelloReply, HelloRequest};
use burrow_core::handshake::api_hello_message;
use burrow_core::identity::PublicKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tunnel::{Stream, Tunnel};

/// Largest answer accepted from the API.
const MAX_RESPONSE: usize = 1 << 20;

/// A verified channel to the gateway API.
pub struct ApiChannel {
    stream: Stream,
    /// The gateway's one-time nonce from hello, for signing a pairing request.
    pub server_nonce: Vec<u8>,
}

/// An answer that is not 2xx: status and the gateway's `error` message.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gateway answered {}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiChannel {
    /// Opens a channel to the API port and checks the gateway's signature.
    pub fn open(
        tunnel: &Tunnel,
        api_port: u16,
        gateway_key: &PublicKey,
    ) -> anyhow::Result<ApiChannel> {
        let mut stream = tunnel
            .open_direct("127.0.0.1", api_port, Duration::from_secs(10))
            .context("opening a channel to the gateway API")?;
        stream.set_read_timeout(Some(Duration::from_secs(20)));
        let nonce: [u8; 32] = burrow_core::random_bytes();
        let mut channel = ApiChannel {
            stream,
            server_nonce: Vec::new(),
        };
        let hello: HelloReply = channel.post(
            "/api/v1/agent/hello",
            None,
            &HelloRequest {
                nonce: STANDARD.encode(nonce),
            },
        )?;
        let server_nonce = STANDARD
            .decode(&hello.server_nonce)
            .context("bad server nonce")?;
        let signature = STANDARD
            .decode(&hello.signature)
            .context("bad hello signature")?;
        gateway_key
            .verify(&api_hello_message(&nonce, &server_nonce), &signature)
            .map_err(|_| {
                anyhow!("the API port is not answered by the pinned gateway key: refusing to talk to it")
            })?;
        channel.server_nonce = server_nonce;
        Ok(channel)
    }

    /// POSTs JSON and parses a JSON answer; non-2xx becomes an [`ApiError`].
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).expect("request serializes");
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(&body)?;
        self.stream.flush()?;
        let (status, bytes) = read_response(&mut self.stream)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ApiError { status, message }.into());
        }
        serde_json::from_slice(&bytes).with_context(|| format!("parsing the answer to {path}"))
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response<R: Read>(stream: &mut R) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .context("reading the gateway's answer")?;
        if n == 0 {
            bail!("the gateway closed the channel before answering");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = response.parse(&buf)? {
            let status = response.code.unwrap_or(0);
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| anyhow!("gateway answer without Content-Length"))?;
            if length > MAX_RESPONSE {
                bail!("gateway answer of {length} bytes is too large");
            }
            let mut body = buf.split_off(head_len);
            while body.len() < length {
                let n = stream
                    .read(&mut chunk)
                    .context("reading the gateway's answer")?;
                if n == 0 {
                    bail!("the gateway closed the channel inside an answer");
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
            return Ok((status, body));
        }
        if buf.len() > 64 * 1024 {
            bail!("gateway answer headers too large");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_response;

    #[test]
    fn parses_split_responses() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\nContent-Type: application/json\r\n\r\n{\"error\":\"x\"}";
        // One byte at a time: the parser must wait for complete headers and body.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let (status, body) = read_response(&mut Trickle(raw)).unwrap();
        assert_eq!(status, 403);
        assert_eq!(body, b"{\"error\":\"x\"}");
        assert!(read_response(&mut Trickle(b"HTTP/1.1 200 OK\r\n\r\n")).is_err());
    }
}
