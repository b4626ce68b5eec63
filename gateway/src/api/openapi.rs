//! `GET /api/v1/openapi.json`: the API described as OpenAPI 3.0, generated from the route table
//! ([`super::routes::ROUTES`]) so it cannot drift from what is served. The table gives each
//! operation its method, path (`{…}` segments become path parameters), permission (security
//! requirement, `x-burrow-roles`, a sentence in the description), body limit (413) and token errors
//! (401/403); [`entries`] adds, per (method, pattern), the summary, query parameters, request body,
//! answers by status and the errors its handler gives; [`schemas`] holds the shapes, derived from
//! what the handlers build. Every error answer is the one `Error` shape.
//!
//! A route without an entry still appears (from the table alone, `x-burrow-undocumented`); the unit
//! tests fail on it, and on an entry that names no route.

mod entries;
mod schemas;

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::routes::{Permission, Req, Route, ROUTES, STREAMED};
use super::{Ctx, Reply};
use crate::refusal::Refusal;
use crate::tokens::Role;
use entries::{Body, Entry, Media, ENTRIES};

/// The route's handler: the document, built once.
pub fn serve(_ctx: &Ctx, _req: &Req) -> Result<Reply, Refusal> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Ok(Reply::Json(200, DOC.get_or_init(document).clone()))
}

/// The whole document for [`ROUTES`].
pub fn document() -> Value {
    build(ROUTES, ENTRIES)
}

fn build(routes: &[Route], entries: &[Entry]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let entry = entries
            .iter()
            .find(|e| e.method == route.method && e.pattern == route.pattern);
        let item = paths
            .entry(route.pattern.to_string())
            .or_insert_with(|| json!({}));
        item[route.method.to_lowercase()] = operation(route, entry);
    }
    let mut components = json!({
        "schemas": schemas::components(),
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An EdDSA JWT from `gateway token create` or POST /api/v1/tokens."}},
    });
    components["schemas"]["Error"]["example"] =
        json!({"error": "no node \"pi-9\"", "code": "not_found"});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "burrow gateway API",
            "version": burrow_core::VERSION,
            "description": "Generated from the gateway's route table. Every error is \
                `{\"error\": \"…\", \"code\": \"…\"}` with the status of its code; 405 answers \
                add `allow` (and the `Allow` header). A gateway that is shutting down answers \
                503 to every new request.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": components,
    })
}

/// The roles a permission lets through, as `x-burrow-roles` lists them.
fn roles(p: Permission) -> Vec<&'static str> {
    if p == Permission::Public {
        return vec!["anyone"];
    }
    [Role::Gateway, Role::Operator, Role::Viewer, Role::Node]
        .into_iter()
        .filter(|r| p.allows(*r))
        .map(Role::as_str)
        .collect()
}

fn operation(route: &Route, entry: Option<&Entry>) -> Value {
    let permission = format!("{:?}", route.permission).to_lowercase();
    let who = match route.permission {
        Permission::Public => "No token: anyone may call it.".to_string(),
        p => format!("Needs a bearer token of role {}.", p.roles()),
    };
    let limit = match route.body_limit {
        STREAMED => "The body is read as it arrives, any size.".to_string(),
        n => format!("Bodies over {n} bytes are refused (413)."),
    };
    let mut op = json!({
        "operationId": operation_id(route),
        "tags": [tag(route.pattern)],
        "description": format!("{who} {limit}"),
        "x-burrow-permission": permission,
        "x-burrow-roles": roles(route.permission),
        "x-burrow-body-limit": if route.body_limit == STREAMED { json!("streamed") }
                                else { json!(route.body_limit) },
    });
    if route.permission == Permission::Public {
        op["security"] = json!([]);
    }
    let mut parameters: Vec<Value> = route
        .pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string", "minLength": 1}})
        })
        .collect();
    let Some(entry) = entry else {
        op["x-burrow-undocumented"] = json!(true);
        op["parameters"] = json!(parameters);
        op["responses"] = json!({"default": error_response("An answer")});
        return op;
    };
    op["summary"] = json!(entry.summary);
    parameters.extend(entry.query.iter().map(|q| {
        json!({"name": q.name, "in": "query", "required": q.required,
               "description": q.description, "schema": (q.schema)()})
    }));
    if !parameters.is_empty() {
        op["parameters"] = json!(parameters);
    }
    match &entry.body {
        Body::None => {}
        Body::Json(schema) => {
            // `parse_body` reads an empty body as `{}`: what then refuses it is a missing field.
            op["requestBody"] = json!({"required": false,
                "description": "An empty body is read as `{}`.",
                "content": {"application/json": {"schema": schema()}}});
        }
        Body::Bytes(description) => {
            // No body is an empty one: an empty file, an empty input.
            op["requestBody"] = json!({"required": false, "description": description,
                "content": {"application/octet-stream":
                    {"schema": {"type": "string", "format": "binary"}}}});
        }
    }
    op["responses"] = responses(route, entry);
    op
}

fn responses(route: &Route, entry: &Entry) -> Value {
    let mut out = Map::new();
    for a in entry.answers {
        let slot = out
            .entry(a.status.to_string())
            .or_insert_with(|| json!({"description": a.description, "content": {}}));
        slot["content"][media_type(a.media)] = json!({"schema": (a.schema)()});
        if a.media == Media::Bytes {
            slot["headers"] = json!({"X-Burrow-Job": {"description": "The transfer's job id.",
                                                      "schema": {"type": "string"}}});
        }
        if slot["description"] != a.description {
            let both = format!(
                "{} {}",
                slot["description"].as_str().unwrap_or(""),
                a.description
            );
            slot["description"] = json!(both);
        }
    }
    let mut errors: Vec<u16> = entry.errors.to_vec();
    if route.permission != Permission::Public {
        errors.extend([401, 403]);
    }
    if route.body_limit != STREAMED {
        errors.push(413);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        out.insert(status.to_string(), error_response(reason(status)));
    }
    Value::Object(out)
}

fn error_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": schemas::r("Error")}}})
}

fn media_type(m: Media) -> &'static str {
    match m {
        Media::Json => "application/json",
        Media::Ndjson => "application/x-ndjson",
        Media::Bytes => "application/octet-stream",
        Media::Prometheus => "text/plain",
        Media::Upgrade => "application/octet-stream",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad request (input, or the node could not run it)",
        401 => "Missing, invalid, expired or revoked token",
        403 => "Not allowed (the token's role, or the node owner's policy)",
        404 => "No such thing",
        409 => "Conflicts with the current state",
        413 => "Body too large",
        503 => "Node offline or lost, or the gateway is stopping",
        504 => "Took too long",
        _ => "Error",
    }
}

/// `get_api_v1_nodes_id_exec`: unique because (method, pattern) is.
fn operation_id(route: &Route) -> String {
    let path: String = route
        .pattern
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{}_{}", route.method.to_lowercase(), path.trim_matches('_'));
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id
}

/// The resource a path is about: `nodes` for `/api/v1/nodes/{id}/exec`.
fn tag(pattern: &str) -> &str {
    let rest = pattern.strip_prefix("/api/v1/").unwrap_or("gateway");
    match rest.split('/').next().unwrap_or(rest) {
        "" | "/healthz" | "/metrics" => "gateway",
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the route table has its documentation entry.
    #[test]
    fn every_route_has_an_entry() {
        let missing: Vec<String> = ROUTES
            .iter()
            .filter(|r| {
                !ENTRIES
                    .iter()
                    .any(|e| e.method == r.method && e.pattern == r.pattern)
            })
            .map(|r| format!("{} {}", r.method, r.pattern))
            .collect();
        assert!(missing.is_empty(), "routes without an entry: {missing:?}");
    }

    /// No entry documents a route that does not exist (or exists twice).
    #[test]
    fn every_entry_names_one_route() {
        for e in ENTRIES {
            let n = ROUTES
                .iter()
                .filter(|r| e.method == r.method && e.pattern == r.pattern)
                .count();
            assert_eq!(n, 1, "entry {} {} names {n} routes", e.method, e.pattern);
        }
    }

    #[test]
    fn the_document_has_every_route_with_its_permission() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        for r in ROUTES {
            let op = &doc["paths"][r.pattern][r.method.to_lowercase()];
            assert!(op.is_object(), "{} {}", r.method, r.pattern);
            assert!(op.get("x-burrow-undocumented").is_none());
            let roles = op["x-burrow-roles"].as_array().unwrap();
            match r.permission {
                Permission::Public => assert_eq!(op["security"], json!([])),
                p => {
                    assert!(op.get("security").is_none(), "inherits bearer");
                    assert!(op["responses"]["401"].is_object());
                    assert!(op["responses"]["403"].is_object());
                    for role in roles {
                        assert!(p.roles().contains(role.as_str().unwrap()));
                    }
                }
            }
            let params = r.pattern.matches('{').count();
            let in_path = op["parameters"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| p["in"] == "path").count());
            assert_eq!(in_path, params, "{}", r.pattern);
            assert_eq!(
                op["responses"].get("413").is_some(),
                r.body_limit != STREAMED,
                "{} {}",
                r.method,
                r.pattern
            );
        }
    }

    /// Every error answer and every `$ref` points at a schema that exists.
    #[test]
    fn errors_use_the_error_schema_and_refs_resolve() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
        for (pattern, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, answer) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            answer["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Error",
                            "{method} {pattern} {status}"
                        );
                    }
                }
            }
        }
    }

    /// A body struct with `deny_unknown_fields` is documented closed, so a client generator does
    /// not invent fields the gateway refuses.
    #[test]
    fn closed_request_bodies_refuse_unknown_fields() {
        let doc = document();
        let s = &doc["components"]["schemas"];
        for name in ["ExecBody", "LabelBody"] {
            assert_eq!(s[name]["additionalProperties"], false, "{name}");
        }
        let token = &doc["paths"]["/api/v1/tokens"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert_eq!(token["additionalProperties"], false);
    }

    /// Regression (schemathesis, ST201 on POST /api/v1/join-tokens): the document said a JSON
    /// body was required, but the gateway answers an empty body as `{}` (201 for join tokens).
    #[test]
    fn json_bodies_are_optional_as_an_empty_body_reads_as_an_empty_object() {
        assert!(
            super::super::parse_body::<serde_json::Map<String, Value>>(b"")
                .unwrap()
                .is_empty()
        );
        let doc = document();
        let mut seen = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let body = &op["requestBody"];
                if body["content"].get("application/json").is_some() {
                    seen += 1;
                    assert_eq!(body["required"], false, "{}", op["operationId"]);
                }
            }
        }
        assert!(seen >= 7, "{seen}");
    }

    #[test]
    fn an_undocumented_route_still_appears_marked() {
        let doc = build(&ROUTES[..1], &[]);
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["x-burrow-undocumented"],
            true
        );
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert(operation_id(r)), "{}", operation_id(r));
        }
        assert_eq!(
            operation_id(&ROUTES[0]),
            "get_healthz",
            "{}",
            ROUTES[0].pattern
        );
    }
}
