//! The API over HTTPS (`serve --tls-cert/--tls-key`, rustls 0.23 in the patched tiny_http): curl
//! verifies it against the test CA; nodes still pair (plain HTTP inside their SSH channel, on a
//! pairing port of its own that serves nothing that takes a token); beyond loopback the API needs
//! TLS or `--insecure`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::util::{bin, isolate, wait_until, Agent, Gateway};

/// The test CA and the server certificate for 127.0.0.1 that tiny_http's own TLS tests use.
fn tls_file(name: &str) -> String {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gateway/vendor/tiny_http/tests/tls");
    dir.join(name).canonicalize().unwrap().display().to_string()
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)")
}

fn node_status(gw: &Gateway, id: &str) -> String {
    let out = gw.cli(&["nodes", "ls", "--json"]);
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .map(|n| n["status"].as_str().unwrap_or("?").to_string())
        .unwrap_or_default()
}

#[test]
fn the_api_serves_https_and_nodes_still_pair_on_the_plain_pairing_port() {
    let (cert, key, ca) = (
        tls_file("server.pem"),
        tls_file("server.key"),
        tls_file("ca.pem"),
    );
    let gw = Gateway::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    let https = format!("https://{}", gw.api);

    // Verified by curl against the CA: /healthz, and a token's request.
    let out = curl(&["--cacert", &ca, &format!("{https}/healthz")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
    let auth = format!("Authorization: Bearer {}", gw.token("viewer"));
    let out = curl(&[
        "--cacert",
        &ca,
        "-H",
        &auth,
        &format!("{https}/api/v1/status"),
    ]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["version"].is_string(), "{status}");

    // Plain HTTP to the TLS port gets no answer (the handshake fails); the server goes on.
    let out = curl(&[&format!("http://{}/healthz", gw.api)]);
    assert!(!out.status.success() || out.stdout.is_empty(), "{out:?}");

    // A node pairs (its join string names the pairing port) and is online on its link.
    let join = gw.join(&[]);
    let _agent = Agent::start(&join, "tls-node");
    wait_until(Duration::from_secs(30), "tls-node online", || {
        node_status(&gw, "tls-node") == "online"
    });

    // The pairing port serves the public routes only: nothing that takes a token, with or without.
    // Its port is the one sshd lets enrollment logins open (`PermitOpen`), not the API's.
    let config = std::fs::read_to_string(gw.data().join("sshd/sshd_config")).unwrap();
    let Some(port) = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("PermitOpen 127.0.0.1:"))
        .and_then(|p| p.parse::<u16>().ok())
    else {
        // Without root there is no enrollment account and no `PermitOpen` line to read it from.
        eprintln!("skipping the pairing port's checks: no enrollment account (not run as root)");
        return;
    };
    assert_ne!(port, gw.api.port());
    let pairing = format!("http://127.0.0.1:{port}");
    let out = curl(&[&format!("{pairing}/healthz")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
    let out = curl(&[
        "-H",
        &auth,
        "-w",
        "\n%{http_code}",
        &format!("{pairing}/api/v1/status"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.ends_with("\n404") && text.contains("pairing port"),
        "{text}"
    );
}

#[test]
fn beyond_loopback_the_api_needs_tls_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        isolate(&mut Command::new(bin("gateway")))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--api", "0.0.0.0:0", "--ssh", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = serve(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("--insecure"),
        "{err}"
    );

    // Half a TLS setup is a usage error, a key that is not one a clear error at start.
    let out = serve(&["--tls-cert", &tls_file("server.pem")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
    let out = serve(&[
        "--tls-cert",
        &tls_file("server.pem"),
        "--tls-key",
        &tls_file("ca.pem"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("private key"), "{err}");

    // With TLS, every interface is fine.
    let gw = Gateway::start_in(
        tempfile::tempdir().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        vec![
            "--tls-cert".into(),
            tls_file("server.pem"),
            "--tls-key".into(),
            tls_file("server.key"),
        ],
    );
    let out = curl(&[
        "--cacert",
        &tls_file("ca.pem"),
        &format!("https://127.0.0.1:{}/healthz", gw.api.port()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
