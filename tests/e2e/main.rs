//! End-to-end tests: the real `gateway` and `agent` binaries, a real OpenSSH sshd run by the gateway
//! on 127.0.0.1, real sockets and files in temp dirs. Nothing is mocked.

mod api;
mod audit;
mod cli_bus;
mod cli_contract;
mod cli_socket;
mod exec;
mod fake_gateway;
mod hostile_http;
mod link;
mod pairing;
mod recovery;
mod relay;
mod revocation;
mod security;
mod sshd_access;
mod util;
