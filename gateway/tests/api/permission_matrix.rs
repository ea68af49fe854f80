//! The permission matrix document and the running router agree: every (role, route) pair is
//! answered as the document says, and both list exactly the same routes.

use crate::helpers::spawn_app;
use gateway::permissions::{Access, PermissionMatrix};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shared::Role;
use sqlx::PgPool;
use std::collections::BTreeSet;

fn matrix_from_disk() -> PermissionMatrix {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/api-permission-matrix.md"
    );
    let document = std::fs::read_to_string(path).expect("docs/api-permission-matrix.md");
    PermissionMatrix::parse(&document).expect("the matrix parses")
}

/// A concrete path for a template: every `{param}` becomes `1`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn code_of(response: reqwest::Response) -> (StatusCode, Option<String>) {
    let status = response.status();
    // Only error bodies carry a code; a successful one may be an endless stream (SSE).
    if status.is_success() {
        return (status, None);
    }
    let body: Option<Value> = response.json().await.ok();
    (
        status,
        body.and_then(|body| body["code"].as_str().map(str::to_owned)),
    )
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn every_role_and_route_pair_is_answered_as_the_matrix_says(db: PgPool) {
    let app = spawn_app(db).await;
    let matrix = matrix_from_disk();
    let mut checked = 0;

    for route in matrix.routes() {
        let path = concrete(&route.path);
        for role in Role::ALL {
            let token = app.token(&format!("matrix-{role}"), &[role]);
            let response = app
                .request(route.method.clone(), &path, Some(&token))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("request");
            let (status, code) = code_of(response).await;
            let allowed = match &route.access {
                Access::Public => true,
                Access::Scope(scope) => matrix.scopes_for(&[role]).contains(scope),
            };
            let pair = format!("{role} → {} {}", route.method, route.path);
            if allowed {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{pair} should be allowed, got {status} {code:?}"
                );
                assert!(
                    code.as_deref() != Some("route_not_found")
                        && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{pair}: the router has no such route ({status} {code:?})"
                );
            } else {
                assert_eq!(
                    (status, code.as_deref()),
                    (StatusCode::FORBIDDEN, Some("forbidden")),
                    "{pair} should be denied"
                );
            }
            checked += 1;
        }
        if let Access::Scope(_) = route.access {
            let response = app
                .request(route.method.clone(), &path, None)
                .send()
                .await
                .expect("request");
            let (status, code) = code_of(response).await;
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::UNAUTHORIZED, Some("token_missing"))
            );
        }
    }
    assert_eq!(checked, matrix.routes().len() * Role::ALL.len());
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_router_and_the_matrix_list_the_same_routes(db: PgPool) {
    let app = spawn_app(db).await;
    let document: Value = app
        .get("/api/v1/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");

    let mut router_routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if let Ok(method) = method.to_uppercase().parse::<Method>() {
                router_routes.insert((method.to_string(), path.clone()));
            }
        }
    }
    let matrix_routes: BTreeSet<(String, String)> = matrix_from_disk()
        .routes()
        .iter()
        .map(|route| (route.method.to_string(), route.path.clone()))
        .collect();

    assert!(!router_routes.is_empty());
    assert_eq!(
        router_routes, matrix_routes,
        "router (left) and matrix (right) differ"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn outside_dev_mode_the_dev_routes_do_not_exist(db: PgPool) {
    let app = crate::helpers::spawn_app_with(db, |settings| settings.dev_mode = false).await;

    let response = app
        .send_json(
            Method::POST,
            "/api/v1/dev/login",
            None,
            &serde_json::json!({"sub": "x", "roles": ["admin"]}),
        )
        .await;

    let (status, code) = code_of(response).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::NOT_FOUND, Some("route_not_found"))
    );
    // The console is no dev tool: served in every mode (its dev login button is not shown).
    assert_eq!(app.get("/console/", None).await.status(), StatusCode::OK);
    let (status, code) = code_of(app.get("/demo/centrifuge.js", None).await).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::NOT_FOUND, Some("route_not_found"))
    );
}
