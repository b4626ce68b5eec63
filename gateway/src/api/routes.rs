//! The route table: every endpoint of the API is one row of [`ROUTES`], saying its method, path
//! pattern, who may call it and how large a body it takes, next to the handler that serves it.
//!
//! Why one table: permission and body limit are data, checked here before any handler runs, so a new
//! route cannot forget either (a [`Route`] cannot be written without a [`Permission`]), and 404, 405
//! (with `Allow`) and 413 come out the same for every route. The matcher is a pure function of method
//! and path, tested without sockets.

use serde_json::json;

use super::{
    agent, audit, exec, files, health, jobs, nodes, openapi, prometheus, services, status, tokens,
    Call, Ctx, Reply,
};
use crate::refusal::{Kind, Refusal};
use crate::tokens::{Role, Verified};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// No token. The handler proves the caller itself (a signed pairing request) or serves nothing
    /// worth protecting (`/healthz`).
    Public,
    /// Read the fleet: viewer, operator, gateway.
    Read,
    /// Run commands: operator, gateway.
    Exec,
    /// Administer (pairing, approvals, tokens): gateway.
    Admin,
}

impl Permission {
    /// The roles that pass, for people ("operator or gateway").
    pub fn roles(self) -> &'static str {
        match self {
            Permission::Public => "anyone",
            Permission::Read => "viewer, operator or gateway",
            Permission::Exec => "operator or gateway",
            Permission::Admin => "gateway",
        }
    }

    /// Whether a caller holding `role` passes.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Permission::Public => true,
            Permission::Read => role.can_read(),
            Permission::Exec => role.can_exec(),
            Permission::Admin => role.can_admin(),
        }
    }
}

/// Who is calling, once the route's permission has been checked.
pub struct Caller {
    /// The verified token; `None` only on [`Permission::Public`] routes.
    pub token: Option<Verified>,
}

impl Caller {
    /// Whether the caller may read command output (operator and gateway; not viewer): see
    /// `GET /api/v1/jobs/{id}/stream` in [`ROUTES`].
    pub fn sees_output(&self) -> bool {
        self.token.as_ref().is_some_and(|t| t.role.can_exec())
    }

    /// The name recorded in the audit log.
    pub fn actor(&self) -> &str {
        self.token.as_ref().map_or("anonymous", |t| &t.subject)
    }
}

/// A request that found its route.
pub struct Req<'a> {
    pub call: &'a Call,
    /// The `{…}` segments of the pattern, in order.
    pub params: Vec<&'a str>,
    pub caller: Caller,
    /// The body as it arrives, for [`STREAMED`] routes (others find it read in `call.body`).
    pub body: std::cell::RefCell<&'a mut dyn std::io::Read>,
}

impl Req<'_> {
    /// The `i`th path parameter (the table guarantees the pattern has it).
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).copied().unwrap_or("")
    }
}

pub type Handler = fn(&Ctx, &Req) -> Result<Reply, Refusal>;

/// One endpoint.
pub struct Route {
    pub method: &'static str,
    /// `/`-separated segments; `{name}` matches any one non-empty segment.
    pub pattern: &'static str,
    pub permission: Permission,
    /// Largest body accepted, in bytes; larger ones are answered 413 before the handler runs.
    pub body_limit: usize,
    pub handler: Handler,
}

/// Routes without a meaningful body still accept a small one (`-d '{}'` from habit).
const SMALL: usize = 4 << 10;
/// Pairing requests and admin bodies: a few keys and names.
const FORM: usize = 64 << 10;
/// An exec request. Its command becomes one frame on the node's link, which must stay below the
/// protocol's frame limit (`burrow_core::protocol::MAX_FRAME`, 1 MiB) with room for the envelope.
pub const EXEC_BODY: usize = 512 << 10;

/// The `body_limit` of routes whose handler reads the body itself, as it arrives, in bounded
/// memory (file uploads, streamed stdin): any size, checked by the handler.
pub const STREAMED: usize = usize::MAX;

/// The largest `body_limit` of any route that is read whole before its handler runs.
pub const MAX_BODY_LIMIT: usize = EXEC_BODY;

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: "/healthz",
        permission: Permission::Public,
        body_limit: SMALL,
        handler: |_, _| Ok(Reply::Json(200, json!({"status": "ok"}))),
    },
    Route {
        method: "POST",
        pattern: "/api/v1/agent/hello",
        permission: Permission::Public,
        body_limit: SMALL,
        handler: agent::hello,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/agent/pair",
        permission: Permission::Public,
        body_limit: FORM,
        handler: agent::pair,
    },
    // Public, as most APIs publish theirs: it is built from this table alone (no fleet data, no
    // secret), and tools (code generators, schemathesis) read it before they hold a token.
    Route {
        method: "GET",
        pattern: "/api/v1/openapi.json",
        permission: Permission::Public,
        body_limit: SMALL,
        handler: openapi::serve,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/status",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: status::status,
    },
    Route {
        method: "GET",
        pattern: "/metrics",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: prometheus::metrics,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/nodes",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: nodes::list,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/nodes/{id}",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: nodes::show,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/metrics",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: health::metrics,
    },
    // A byte stream to a service the node declares, over an HTTP upgrade (`gateway connect`).
    Route {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/services/{name}/connect",
        permission: Permission::Exec,
        body_limit: SMALL,
        handler: services::connect,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/history",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: health::history,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/alerts",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: health::alerts,
    },
    Route {
        method: "PATCH",
        pattern: "/api/v1/nodes/{id}",
        permission: Permission::Exec,
        body_limit: FORM,
        handler: nodes::label,
    },
    Route {
        method: "DELETE",
        pattern: "/api/v1/nodes/{id}",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: nodes::revoke,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/approve",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: nodes::approve,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/reject",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: nodes::reject,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/nodes/{id}/exec",
        permission: Permission::Exec,
        body_limit: EXEC_BODY,
        handler: exec::exec,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/exec",
        permission: Permission::Exec,
        body_limit: EXEC_BODY,
        handler: exec::fleet,
    },
    Route {
        method: "PUT",
        pattern: "/api/v1/nodes/{id}/files",
        permission: Permission::Exec,
        body_limit: STREAMED,
        handler: files::put_one,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/nodes/{id}/files",
        permission: Permission::Exec,
        body_limit: SMALL,
        handler: files::get,
    },
    Route {
        method: "PUT",
        pattern: "/api/v1/files",
        permission: Permission::Exec,
        body_limit: STREAMED,
        handler: files::put_many,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/jobs",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: jobs::list,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/jobs/{id}",
        permission: Permission::Read,
        body_limit: SMALL,
        handler: jobs::show,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/jobs/{id}/stream",
        // Command output can carry what viewers must not read (env dumps, config files, keys): a
        // viewer sees a job's states, exit codes and sizes (`GET /api/v1/jobs/{id}`), not its output.
        permission: Permission::Exec,
        body_limit: SMALL,
        handler: jobs::stream,
    },
    Route {
        method: "PUT",
        pattern: "/api/v1/jobs/{id}/stdin",
        permission: Permission::Exec,
        body_limit: STREAMED,
        handler: jobs::stdin,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/resize",
        permission: Permission::Exec,
        body_limit: SMALL,
        handler: jobs::resize,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/signal",
        permission: Permission::Exec,
        body_limit: SMALL,
        handler: jobs::signal,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/jobs/{id}/cancel",
        permission: Permission::Exec,
        body_limit: SMALL,
        handler: jobs::cancel,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/join-tokens",
        permission: Permission::Admin,
        body_limit: FORM,
        handler: tokens::create_join,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/join-tokens",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: tokens::list_joins,
    },
    Route {
        method: "DELETE",
        pattern: "/api/v1/join-tokens/{id}",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: tokens::revoke_join,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/audit",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: audit::list,
    },
    Route {
        method: "POST",
        pattern: "/api/v1/tokens",
        permission: Permission::Admin,
        body_limit: FORM,
        handler: tokens::create,
    },
    Route {
        method: "GET",
        pattern: "/api/v1/tokens",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: tokens::list,
    },
    Route {
        method: "DELETE",
        pattern: "/api/v1/tokens/{jti}",
        permission: Permission::Admin,
        body_limit: SMALL,
        handler: tokens::revoke,
    },
];

/// What the table says about a method and path.
pub enum Lookup<'t, 'p> {
    Route(&'t Route, Vec<&'p str>),
    /// The path exists with other methods (for `Allow`).
    MethodNotAllowed(Vec<&'static str>),
    NotFound,
}

/// Looks `method` and `path` (query string already removed) up in `table`.
pub fn find<'t, 'p>(table: &'t [Route], method: &str, path: &'p str) -> Lookup<'t, 'p> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let mut allowed = Vec::new();
    for route in table {
        let Some(params) = matches(route.pattern, &segments) else {
            continue;
        };
        if route.method == method {
            return Lookup::Route(route, params);
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        Lookup::NotFound
    } else {
        Lookup::MethodNotAllowed(allowed)
    }
}

fn matches<'p>(pattern: &str, segments: &[&'p str]) -> Option<Vec<&'p str>> {
    let parts: Vec<&str> = pattern.split('/').skip(1).collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        if part.starts_with('{') {
            if segment.is_empty() {
                return None;
            }
            params.push(*segment);
        } else if part != segment {
            return None;
        }
    }
    Some(params)
}

/// The refusal for a body of `len` bytes on `route` (declared or counted), if it is too large.
pub fn check_body(route: &Route, len: u64) -> Result<(), Refusal> {
    if route.body_limit != STREAMED && len > route.body_limit as u64 {
        return Err(Refusal::new(
            Kind::TooLarge,
            format!(
                "request body of {len} bytes exceeds the {} byte limit of {} {}",
                route.body_limit, route.method, route.pattern
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route<'p>(r: Lookup<'_, 'p>) -> (&'static str, Vec<&'p str>) {
        match r {
            Lookup::Route(r, p) => (r.pattern, p),
            Lookup::MethodNotAllowed(m) => panic!("405, allow {m:?}"),
            Lookup::NotFound => panic!("404"),
        }
    }

    #[test]
    fn every_row_is_unique_and_well_formed() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(a.pattern.starts_with('/'), "{}", a.pattern);
            assert!(["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&a.method));
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.pattern == b.pattern),
                    "{} {} twice",
                    a.method,
                    a.pattern
                );
            }
        }
    }

    #[test]
    fn max_body_limit_is_the_largest_route_limit() {
        assert_eq!(
            ROUTES
                .iter()
                .map(|r| r.body_limit)
                .filter(|l| *l != STREAMED)
                .max(),
            Some(MAX_BODY_LIMIT)
        );
    }

    #[test]
    fn params_are_captured_in_order() {
        let (p, params) = route(find(ROUTES, "POST", "/api/v1/nodes/pi-1/exec"));
        assert_eq!(p, "/api/v1/nodes/{id}/exec");
        assert_eq!(params, ["pi-1"]);
        // A trailing slash names the same resource.
        let (p, _) = route(find(ROUTES, "GET", "/api/v1/nodes/"));
        assert_eq!(p, "/api/v1/nodes");
    }

    #[test]
    fn a_known_path_with_another_method_is_405_with_its_methods() {
        match find(ROUTES, "DELETE", "/api/v1/nodes/pi-1/exec") {
            Lookup::MethodNotAllowed(m) => assert_eq!(m, ["POST"]),
            _ => panic!("expected 405"),
        }
        match find(ROUTES, "GET", "/api/v1/agent/pair") {
            Lookup::MethodNotAllowed(m) => assert_eq!(m, ["POST"]),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/api",
            "/api/v1",
            "/api/v1/nodes/a/b/c",
            "/api/v1/nodes//exec",
            "/healthz/x",
        ] {
            assert!(
                matches!(find(ROUTES, "GET", path), Lookup::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn bodies_over_the_route_limit_are_413() {
        let Lookup::Route(r, _) = find(ROUTES, "POST", "/api/v1/nodes/x/exec") else {
            panic!()
        };
        assert!(check_body(r, EXEC_BODY as u64).is_ok());
        let err = check_body(r, EXEC_BODY as u64 + 1).unwrap_err();
        assert_eq!(err.kind, Kind::TooLarge);
        assert_eq!(err.kind.status(), 413);
    }

    /// `roles` says exactly who `allows`.
    #[test]
    fn permission_roles_name_who_passes() {
        use Role::*;
        for p in [Permission::Read, Permission::Exec, Permission::Admin] {
            let named: Vec<Role> = [Gateway, Operator, Viewer]
                .into_iter()
                .filter(|r| p.roles().contains(r.as_str()))
                .collect();
            let allowed: Vec<Role> = [Gateway, Operator, Viewer, Node]
                .into_iter()
                .filter(|r| p.allows(*r))
                .collect();
            assert_eq!(named, allowed, "{p:?}");
        }
    }

    #[test]
    fn only_public_rows_take_no_token() {
        for r in ROUTES {
            if r.pattern.starts_with("/api/v1/agent/") {
                assert_eq!(r.permission, Permission::Public, "{}", r.pattern);
            } else if !["/healthz", "/api/v1/openapi.json"].contains(&r.pattern) {
                assert_ne!(r.permission, Permission::Public, "{}", r.pattern);
            }
        }
    }
}
