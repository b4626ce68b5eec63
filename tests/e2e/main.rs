//! End-to-end tests: the real `gateway` and `agent` binaries, a real OpenSSH sshd run by the gateway
//! on 127.0.0.1, real sockets and files in temp dirs. Nothing is mocked, with one addition:
//! `cli_contract` also runs the real CLI against a fake jobs API (`fake_gateway`) to reach the
//! corners a real fleet cannot be made to show on demand (an unanswered cancel, a cut download);
//! `cli_bus` runs the same CLI against the real gateway and agents.

mod api;
mod audit;
mod bus;
mod cli_bus;
mod cli_contract;
mod cli_health;
mod cli_socket;
mod exec;
mod fake_gateway;
mod files;
mod health;
mod help;
mod hostile_http;
mod link;
mod max_nodes;
mod metrics;
mod openapi;
mod pairing;
mod policy;
mod prometheus;
mod rbac;
mod recovery;
mod relay;
mod revocation;
mod security;
mod services;
mod shell;
mod sshd_access;
mod store;
mod tls;
mod tokens;
mod util;
