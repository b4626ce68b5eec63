//! `serve --max-nodes`: a join beyond the limit is refused on both sides, the agent saying why and
//! exiting non-zero, the API answering 409 `node_limit`; rejected nodes do not count, and approving
//! one back is refused while the gateway is full.

use std::time::Duration;

use crate::util::{agent_join, wait_until, Agent, Gateway};

#[test]
fn a_join_beyond_max_nodes_is_refused_on_both_sides() {
    let gw = Gateway::start_with(&["--max-nodes", "1"]);
    let join = gw.join(&["--uses", "5"]);
    let _first = Agent::start(&join, "first");
    gw.wait_status("first", "online");

    let out = agent_join(&join, "second");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second join succeeded: {err}");
    assert!(
        err.contains("409") && err.contains("this gateway is full") && err.contains("--max-nodes"),
        "{err}"
    );
    assert_eq!(gw.node("second"), serde_json::Value::Null);

    // The same refusal over the API, as JSON with its own code; the token's use is not spent.
    let secret = burrow_core::join::JoinTicket::decode(&join).unwrap().secret;
    let key = burrow_core::identity::Identity::generate("third");
    let (status, body) = super::pairing::signed_pair(&gw, &key, "third", Some(&secret));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "node_limit", "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("1 nodes are approved or pending"));

    let (_, status) = gw.api("GET", "/api/v1/status", None);
    assert_eq!(status["max_nodes"], 1, "{status}");
    assert_eq!(status["nodes_used"], 1, "{status}");

    // A rejected node frees its place; approving it back while another holds it is refused.
    let (code, _) = gw.api("POST", "/api/v1/nodes/first/reject", None);
    assert_eq!(code, 200);
    let out = agent_join(&join, "second");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = gw.api("POST", "/api/v1/nodes/first/approve", None);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "node_limit");
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        gw.log_text().contains("this gateway is full")
    });
}
