//! End-to-end tests: the real `gateway` and `agent` binaries, a real OpenSSH sshd run by the gateway
//! on 127.0.0.1, real sockets and files in temp dirs. Nothing is mocked.

mod cli_socket;
mod exec;
mod hostile_http;
mod pairing;
mod recovery;
mod security;
mod util;
