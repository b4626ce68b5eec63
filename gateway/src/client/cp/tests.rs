use serde_json::json;

use super::*;

fn up<'a>(local: &'a str, target: &'a str, path: &'a str) -> Direction<'a> {
    Direction::Up {
        local,
        remote: Remote { target, path },
    }
}

#[test]
fn the_remote_side_decides_the_direction() {
    assert_eq!(
        direction("./agent", "pi-1:/usr/local/bin/agent").unwrap(),
        up("./agent", "pi-1", "/usr/local/bin/agent")
    );
    assert_eq!(
        direction("-", "label:site=home:/opt/x").unwrap(),
        up("-", "label:site=home", "/opt/x")
    );
    assert_eq!(
        direction("pi-1:/var/log/syslog", "-").unwrap(),
        Direction::Down {
            remote: Remote {
                target: "pi-1",
                path: "/var/log/syslog"
            },
            local: "-"
        }
    );
    let usage = |source, dest| direction(source, dest).unwrap_err().0;
    assert!(usage("glob:pi-*:/x", "x").contains("from one node"));
    assert!(usage("pi-1:/x", "pi-2:/x").contains("both sides"));
    assert!(usage("a", "b").contains("neither side"));
    assert!(
        usage("a", "pi-1:tmp/a").contains("must be absolute"),
        "{}",
        usage("a", "pi-1:tmp/a")
    );
}

#[test]
fn uploads_use_the_node_route_for_an_id_and_the_target_route_for_the_rest() {
    assert_eq!(
        upload_url("pi-1", "/opt/a b", Some(0o755)),
        "/api/v1/nodes/pi-1/files?path=/opt/a%20b&mode=0755"
    );
    assert_eq!(
        upload_url("glob:pi-*", "/opt/x", None),
        "/api/v1/files?target=glob%3Api-%2A&path=/opt/x"
    );
    assert_eq!(
        upload_url("pi-1,pi-2", "/x", Some(0o4700)),
        "/api/v1/files?target=pi-1%2Cpi-2&path=/x&mode=4700"
    );
}

#[test]
fn a_remote_directory_gets_the_local_name() {
    assert_eq!(upload_path("/opt/", "./build/agent").unwrap(), "/opt/agent");
    assert_eq!(upload_path("/opt/x", "./build/agent").unwrap(), "/opt/x");
    assert!(upload_path("/opt/", "-").is_err());
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        destination(dir.path(), "/var/log/syslog"),
        dir.path().join("syslog")
    );
    let file = dir.path().join("copy");
    assert_eq!(destination(&file, "/var/log/syslog"), file);
}

#[test]
fn each_node_is_reported_and_checked_against_what_was_sent() {
    let sha = "ab".repeat(32);
    let answer = json!({"job_id": "j1", "state": "failed", "results": [
        {"node": "a", "state": "succeeded", "bytes": 5, "sha256": sha},
        {"node": "b", "state": "succeeded", "bytes": 5, "sha256": "00".repeat(32)},
        {"node": "c", "state": "offline", "error": "c is offline", "code": "offline"},
    ], "summary": {"succeeded": 2, "offline": 1}});
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ok = report_upload(&answer, "/x", 5, &sha, &mut out, &mut err).unwrap();
    assert!(!ok);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("a:/x: 5 bytes, sha256 {sha}\n")
    );
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("b:/x: the node has 5 bytes with sha256 0000"),
        "{err}"
    );
    assert!(err.contains("c:/x: offline: c is offline\n"), "{err}");
    assert!(err.ends_with("2 succeeded, 1 offline\n"), "{err}");

    let all = json!({"results": [{"node": "a", "state": "succeeded", "bytes": 5, "sha256": sha}]});
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert!(report_upload(&all, "/x", 5, &sha, &mut out, &mut err).unwrap());
    // No result at all is no success.
    let none = json!({"results": []});
    assert!(!report_upload(&none, "/x", 5, &sha, &mut out, &mut err).unwrap());
}

#[test]
fn a_download_lands_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("got");
    let (bytes, sha) = save(&mut &b"abc"[..], &dest, "pi-1:/x", Some(3)).unwrap();
    assert_eq!((bytes, std::fs::read(&dest).unwrap()), (3, b"abc".to_vec()));
    assert_eq!(
        sha,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    /// Fails after some bytes, as a dropped connection does.
    struct Cut(usize);
    impl Read for Cut {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::ErrorKind::ConnectionReset.into());
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(b'z');
            self.0 -= n;
            Ok(n)
        }
    }
    let err = save(&mut Cut(PIECE * 2 + 3), &dest, "pi-1:/x", None).unwrap_err();
    assert!(format!("{err:#}").contains("receiving pi-1:/x"), "{err:#}");
    // A body that ends early (Content-Length not reached) is cut too.
    let err = save(&mut &b"abcd"[..], &dest, "pi-1:/x", Some(10)).unwrap_err();
    assert!(
        format!("{err:#}").contains("after 4 of 10 bytes"),
        "{err:#}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"abc", "the old file stays");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temp file left: {left:?}");
}
