//! Pairing's unit tests: key lines, names, TTL bounds.

use super::*;

#[test]
fn expiry_time_is_utc_minutes() {
    assert_eq!(expiry_time(0), "197001010000Z");
    assert_eq!(expiry_time(61), "197001010002Z");
}

/// The log comes first so that, bound as `let (_log, pairing)`, it drops (joining its writer)
/// after the pairing's handle is gone.
fn pairing_in(dir: &std::path::Path) -> (crate::audit::AuditLog, Pairing) {
    let registry = std::sync::Arc::new(Registry::open(dir).unwrap());
    let audit = crate::audit::AuditLog::open(&dir.join("audit.log")).unwrap();
    let contact = Contact {
        ssh_public: "127.0.0.1:2222".into(),
        ssh_user: "root".into(),
        enroll_user: Some("burrow-enroll".into()),
        host_fingerprint: "SHA256:x".into(),
        api_port: 18789,
    };
    let pairing = Pairing::new(
        Identity::generate("g"),
        registry,
        contact,
        Box::new(|_| Ok(())),
        audit.handle(),
    )
    .unwrap();
    (audit, pairing)
}

/// Regression: a `"10000y"` join token was saved, after which writing `authorized_keys` (and so
/// pairing and `serve`) panicked on a year past 9999.
#[test]
fn join_ttl_of_10000y_is_refused_and_one_already_saved_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, pairing) = pairing_in(dir.path());
    let millennia = Duration::from_secs(10_000 * 365 * 86400);
    let err = pairing
        .create_join(millennia, 1, false, "test")
        .unwrap_err();
    assert_eq!(err.kind, Kind::BadRequest);
    assert!(err.message.contains("too long"), "{}", err.message);
    pairing.create_join(MAX_JOIN_TTL, 1, false, "test").unwrap();

    // A state file from before the bound: the token is cut to the bound at start.
    pairing
        .registry
        .update(|s| {
            s.join_tokens[0].expires_at = u64::MAX;
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
    let state = pairing.registry.read();
    assert_eq!(
        key_lines(&state, 1, now()).enrollment.len(),
        1,
        "no panic on u64::MAX"
    );
    drop(state);
    drop(pairing);
    let (_log, again) = pairing_in(dir.path());
    let t = &again.registry.read().join_tokens[0];
    assert_eq!(t.expires_at, t.created_at + MAX_JOIN_TTL.as_secs());
    assert_eq!(expiry_time(u64::MAX), "999912312359Z");
}

#[test]
fn names_are_checked() {
    assert!(validate_name("pi-1").is_ok());
    assert!(validate_name("").is_err());
    assert!(validate_name("../etc").is_err());
    assert!(validate_name("a b").is_err());
}
