//! The CLI's share of the target syntax: the gateway parses targets (`pi-1`, `pi-1,pi-2`, `*`,
//! `glob:pi-*`, `cap:gpu`, `label:site=home`, `any:<target>`) and the CLI passes them unchanged;
//! it only needs to know whether a target is one plain node id (stdin can stream to it, a file
//! can come from it), where `cp`'s `TARGET:/path` splits, and how to put both in a query string.

/// Whether `target` is a single node id, as node names are (`pairing::validate_name`): 1–63 of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-`. Lists, selectors and `*` are not.
pub fn is_node_id(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= 63
        && !target.starts_with(['.', '-'])
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One side of `gateway cp` that is on nodes: `TARGET:/abs/path`.
#[derive(Debug, PartialEq, Eq)]
pub struct Remote<'a> {
    /// The target, unparsed (the gateway parses it).
    pub target: &'a str,
    /// The absolute path on the nodes.
    pub path: &'a str,
}

/// `TARGET:/path` → the target and the path, or `None` for a local path. The path starts at the
/// first `/` and the target ends at the `:` right before it (so `label:site=home:/opt/x` is
/// `label:site=home` and `/opt/x`, and a path may hold colons). Like scp, anything with a `/`
/// before its first `:/` (`./a:/b`, `/tmp/x`) is local, and so is `-`.
pub fn parse_remote(spec: &str) -> Option<Remote<'_>> {
    let slash = spec.find('/')?;
    let target = spec[..slash].strip_suffix(':')?;
    (!target.is_empty()).then(|| Remote {
        target,
        path: &spec[slash..],
    })
}

/// A query string (`?k=v&…`) of the pairs whose value is set, percent-encoded (RFC 3986: all but
/// unreserved characters and `/`), so targets like `label:site=home` and `*` pass unchanged.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        let Some(value) = value else { continue };
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(key);
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

/// Percent-encodes a query value (`/` kept: it is plain in a query, and paths read better).
pub fn encode(text: &str) -> String {
    percent(text, true)
}

/// Percent-encodes one URL path segment (a job or node id): `/` too, so it stays one segment.
pub fn segment(text: &str) -> String {
    percent(text, false)
}

fn percent(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(spec: &str) -> Option<(&str, &str)> {
        parse_remote(spec).map(|r| (r.target, r.path))
    }

    #[test]
    fn cp_targets_end_at_the_colon_before_the_paths_slash() {
        assert_eq!(remote("pi-1:/etc/hosts"), Some(("pi-1", "/etc/hosts")));
        assert_eq!(
            remote("label:site=home:/opt/x"),
            Some(("label:site=home", "/opt/x"))
        );
        assert_eq!(
            remote("any:cap:gpu:/tmp/a:b"),
            Some(("any:cap:gpu", "/tmp/a:b"))
        );
        assert_eq!(remote("glob:pi-*:/opt/"), Some(("glob:pi-*", "/opt/")));
        assert_eq!(remote("*:/x"), Some(("*", "/x")));
        assert_eq!(remote("pi-1,pi-2:/x"), Some(("pi-1,pi-2", "/x")));
        // Local: no `:/`, a slash first, `-`, an empty target.
        for local in [
            "-",
            "file",
            "pi-1:relative",
            "./a:/b",
            "/tmp/x:/y",
            ":/x",
            "dir/file",
        ] {
            assert_eq!(remote(local), None, "{local}");
        }
    }

    #[test]
    fn node_ids_are_plain_names() {
        for id in ["pi-1", "a", "node.lan", "x_y"] {
            assert!(is_node_id(id), "{id}");
        }
        for not in [
            "",
            "*",
            "pi-1,pi-2",
            "glob:pi-*",
            "cap:gpu",
            "any:pi-1",
            "-x",
            ".x",
            "a b",
        ] {
            assert!(!is_node_id(not), "{not}");
        }
        assert!(!is_node_id(&"a".repeat(64)));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query(&[
                ("target", Some("label:site=home,cap:gpu")),
                ("skip", None),
                ("path", Some("/opt/my file&x")),
                ("mode", Some("0755")),
            ]),
            "?target=label%3Asite%3Dhome%2Ccap%3Agpu&path=/opt/my%20file%26x&mode=0755"
        );
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(encode("*"), "%2A");
        assert_eq!(segment("../x/y"), "..%2Fx%2Fy");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
