//! The OpenAPI document (`openapi.json`, served at `GET /api/v1/openapi.json`) against the
//! router: it is served as built, it parses, and it names every route of `resolve()` with
//! exactly the methods the server takes. `ROUTES` below mirrors `resolve()`; a route added to
//! the server, the document or the list without the others fails one of these tests.
//! `cargo xtask openapi` checks the responses themselves against the document.

mod common;

use common::TestServer;
use http::{Method, StatusCode, header};
use serde_json::Value;
use std::collections::BTreeSet;

const GET: &[&str] = &["GET", "HEAD"];
const POST: &[&str] = &["POST"];
const GET_POST: &[&str] = &["GET", "HEAD", "POST"];
const DELETE: &[&str] = &["DELETE"];
const PUT_DELETE: &[&str] = &["PUT", "DELETE"];
const PATCH_DELETE: &[&str] = &["PATCH", "DELETE"];

/// Every route of `resolve()` in `src/routes/mod.rs` (and the server API's in `routes/server.rs`) as an OpenAPI path template, with its methods
/// in the order of its `Allow` header.
const ROUTES: &[(&str, &[&str])] = &[
    ("/", GET),
    ("/app.js", GET),
    ("/app/{module}", GET),
    ("/app.css", GET),
    ("/im-client.js", GET),
    ("/healthz", GET),
    ("/readyz", GET),
    ("/metrics", GET),
    ("/files/{token}/{name}", GET),
    ("/api/v1/openapi.json", GET),
    ("/api/v1/auth/register", POST),
    ("/api/v1/auth/login", POST),
    ("/api/v1/auth/logout", POST),
    ("/api/v1/auth/session", GET),
    ("/api/v1/auth/sessions", GET),
    ("/api/v1/auth/sessions/{id}", DELETE),
    ("/api/v1/auth/logout-all", POST),
    ("/api/v1/auth/password", POST),
    ("/api/v1/me", GET),
    ("/api/v1/events", GET),
    ("/api/v1/messages", POST),
    ("/api/v1/messages/{id}", PATCH_DELETE),
    ("/api/v1/messages/{id}/reactions/{emoji}", PUT_DELETE),
    ("/api/v1/conversations", GET),
    ("/api/v1/conversations/{conversation}/messages", GET),
    ("/api/v1/conversations/{conversation}/read", POST),
    ("/api/v1/typing", POST),
    ("/api/v1/files", POST),
    ("/api/v1/friends", GET),
    ("/api/v1/friends/requests", GET_POST),
    ("/api/v1/friends/requests/{id}/accept", POST),
    ("/api/v1/friends/requests/{id}/decline", POST),
    ("/api/v1/friends/{user_id}", DELETE),
    ("/api/v1/blocks", GET_POST),
    ("/api/v1/blocks/{user_id}", DELETE),
    ("/api/v1/groups", GET_POST),
    ("/api/v1/groups/{id}", GET),
    ("/api/v1/groups/{id}/members", POST),
    ("/api/v1/groups/{id}/members/{user_id}", PUT_DELETE),
    ("/api/v1/server/messages", POST),
    ("/api/v1/server/online", GET),
    ("/api/v1/server/presence", GET),
    ("/api/v1/server/users/{user_id}/disconnect", POST),
    ("/api/v1/server/users/{user_id}/sessions", DELETE),
    ("/api/v1/server/conversations/{conversation}/messages", GET),
];

/// The document as it is in the crate, which is what the binary embeds.
const DOCUMENT: &str = include_str!("../openapi.json");

/// A path template with every `{name}` made `{}`, so templates compare by shape.
fn shape(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The listed routes, one `METHOD template` each.
fn listed() -> BTreeSet<String> {
    ROUTES
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(move |m| format!("{m} {path}")))
        .collect()
}

/// Fails with what only one side has, unless `left` and `right` are equal.
fn assert_same(left: &BTreeSet<String>, right: &BTreeSet<String>, names: (&str, &str)) {
    let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
        a.difference(b).cloned().collect()
    };
    assert!(
        left == right,
        "only in {}: {:?}; only in {}: {:?}",
        names.0,
        only(left, right),
        names.1,
        only(right, left)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_as_built_without_a_session() {
    let server = TestServer::start().await;
    let anon = server.client();
    let res = anon
        .raw(Method::GET, "/api/v1/openapi.json", &[], "")
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(res.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(res.body, DOCUMENT.as_bytes());
    let doc: Value = serde_json::from_slice(&res.body).expect("the document is JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1, not {}",
        doc["openapi"]
    );
    let head = anon
        .raw(Method::HEAD, "/api/v1/openapi.json", &[], "")
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    // A bad token does not matter: the document is public.
    let stranger = anon.with_token("0".repeat(64));
    let res = stranger
        .raw(Method::GET, "/api/v1/openapi.json", &[], "")
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
}

#[test]
fn the_document_names_every_listed_route_with_its_methods() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
    let paths = doc["paths"].as_object().expect("the document has paths");
    const VERBS: [&str; 8] = [
        "get", "head", "post", "put", "delete", "patch", "options", "trace",
    ];
    let documented: BTreeSet<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            let verbs = item.as_object().into_iter().flat_map(|ops| ops.keys());
            verbs
                .filter(|k| VERBS.contains(&k.as_str()))
                .map(move |k| format!("{} {path}", k.to_uppercase()))
        })
        .collect();
    assert_same(&documented, &listed(), ("openapi.json", "ROUTES"));
    // schemathesis picks operations by id, and excludes the event stream and the
    // operations that end the session that way.
    let mut ids = BTreeSet::new();
    for (path, item) in paths {
        for (verb, op) in item.as_object().into_iter().flatten() {
            let id = op["operationId"].as_str();
            assert!(id.is_some(), "{verb} {path} has no operationId");
            assert!(ids.insert(id), "operationId {id:?} is used twice");
        }
    }
}

/// The paths of the arms of `fn resolve(` in `source`, each under `base`. A `rest @ ..` arm
/// at the top makes the arms nested in it a prefix; one nested deeper hands over to another
/// router (the server API's), scanned from its own file.
fn arms_of<'a>(source: &'a str, base: &[&'a str]) -> BTreeSet<String> {
    let start = source.find("fn resolve(").expect("a fn resolve");
    let body = &source[start..];
    let body = &body[..body.find("\n}\n").expect("fn resolve ends")];
    let mut prefix: Option<(usize, Vec<&str>)> = None;
    let mut arms = BTreeSet::new();
    for line in body.lines() {
        let indent = line.len() - line.trim_start().len();
        let line = line.trim_start();
        let Some(pattern) = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .filter(|(_, after)| after.contains("=>"))
            .map(|(pattern, _)| pattern)
        else {
            continue;
        };
        // A literal stays, a binding is a parameter; `rest @ ..` makes the arm a prefix.
        let segments: Vec<&str> = pattern
            .split(',')
            .map(str::trim)
            .map(|s| {
                s.strip_prefix('"')
                    .map_or("{}", |l| l.trim_end_matches('"'))
            })
            .collect();
        if pattern.contains("@ ..") {
            if prefix.as_ref().is_some_and(|(at, _)| indent > *at) {
                continue;
            }
            let literals = segments[..segments.len() - 1].to_vec();
            prefix = Some((indent, literals));
            continue;
        }
        let mut path: Vec<&str> = base.to_vec();
        if let Some((_, literals)) = prefix.as_ref().filter(|(at, _)| indent > *at) {
            path.extend(literals);
        }
        path.extend(segments);
        arms.insert(format!("/{}", path.join("/")));
    }
    arms
}

#[test]
fn resolve_has_no_route_missing_from_the_list() {
    // `resolve()` is private to the crate, so its arms are read from the source: each one
    // is a slice pattern of path segments, `"literal"` or a binding.
    let mut arms = arms_of(include_str!("../src/routes/mod.rs"), &[]);
    let server = arms_of(
        include_str!("../src/routes/server.rs"),
        &["api", "v1", "server"],
    );
    assert!(server.len() >= 6, "the server API's routes: {server:?}");
    arms.extend(server);
    // The web client's files resolve through `assets::find`, one path each; the app's
    // modules are one templated route.
    for path in asset_paths() {
        arms.insert(if path.starts_with("/app/") {
            "/app/{}".to_owned()
        } else {
            path
        });
    }
    assert!(
        arms.len() > 20,
        "the scan of resolve() found only {arms:?}: update it to the new shape of the code"
    );
    let listed: BTreeSet<String> = ROUTES.iter().map(|(path, _)| shape(path)).collect();
    assert_same(&arms, &listed, ("resolve()", "ROUTES"));
}

/// The paths of the embedded web files, read from `src/assets.rs`.
fn asset_paths() -> Vec<String> {
    let source = include_str!("../src/assets.rs");
    source
        .match_indices("Asset::new(")
        .filter_map(|(at, call)| source[at + call.len()..].trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split_once('"'))
        .map(|(path, _)| path.to_owned())
        .filter(|path| path.starts_with('/'))
        .collect()
}

#[test]
fn the_documented_app_modules_are_the_embedded_ones() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
    let module = doc["paths"]["/app/{module}"]["get"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "module"))
        .expect("GET /app/{module} has a module parameter");
    let documented: BTreeSet<String> = module["schema"]["enum"]
        .as_array()
        .expect("the module parameter lists the modules")
        .iter()
        .filter_map(|m| m.as_str().map(|m| format!("/app/{m}")))
        .collect();
    let embedded: BTreeSet<String> = asset_paths()
        .into_iter()
        .filter(|p| p.starts_with("/app/"))
        .collect();
    assert!(embedded.len() > 3, "the app's modules: {embedded:?}");
    assert_same(&documented, &embedded, ("openapi.json", "assets.rs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_route_takes_exactly_its_methods() {
    let server = TestServer::start().await;
    let anon = server.client();
    for (template, methods) in ROUTES {
        // Any non-empty segment resolves; a number fits every id, and a module is a file.
        let path = template
            .split('/')
            .map(|s| match s {
                "{module}" => "chat.js",
                s if s.starts_with('{') => "1",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        // No route takes OPTIONS, so every known path answers it 405 with its methods.
        let res = anon.raw(Method::OPTIONS, &path, &[], "").await.unwrap();
        assert_eq!(
            (res.status, res.error_code().as_deref()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
            "OPTIONS {path}"
        );
        assert_eq!(
            res.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()),
            Some(methods.join(", ").as_str()),
            "the methods of {path}"
        );
    }
}
