//! 401 for missing, malformed, badly signed, expired and ill-claimed tokens; 403 for a role
//! without the scope; just-in-time provisioning of users and accounts.

use crate::helpers::{assert_problem, spawn_app};
use gateway::auth::{Claims, TokenKeys, TokenRequest};
use reqwest::StatusCode;
use secrecy::SecretString;
use shared::Role;
use sqlx::{PgPool, Row};

const ME: &str = "/api/v1/sessions/me";

fn claims(roles: &[&str], exp_offset: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: "carol".into(),
        roles: roles.iter().map(|role| role.to_string()).collect(),
        exp: now + exp_offset,
        iat: now - 1,
        nbf: None,
        account_id: None,
        name: None,
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_request_without_a_token_is_401_token_missing(db: PgPool) {
    let app = spawn_app(db).await;

    assert_problem(
        app.get(ME, None).await,
        StatusCode::UNAUTHORIZED,
        "token_missing",
    )
    .await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_non_bearer_authorization_header_is_401_token_invalid(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app
        .request(reqwest::Method::GET, ME, None)
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .expect("request");

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_malformed_token_is_401_token_invalid(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app.get(ME, Some("not.a.jwt")).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_token_signed_with_another_secret_is_401_token_invalid(db: PgPool) {
    let app = spawn_app(db).await;
    let forger = TokenKeys::new(
        &SecretString::from("a-completely-different-secret-0123456789"),
        std::time::Duration::from_secs(86_400),
    );
    let request = TokenRequest {
        sub: "mallory".into(),
        roles: vec![Role::Admin],
        account_id: None,
        name: None,
        ttl_seconds: 60,
    };
    let (forged, _) = forger.mint(&request).expect("mint");

    let response = app.get(ME, Some(&forged)).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
    let users: i64 = sqlx::query_scalar("select count(*) from users where id = 'mallory'")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(users, 0, "a forged token must not provision anyone");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_expired_token_is_401_token_expired(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app.get(ME, Some(&app.sign(&claims(&["user"], -5)))).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_token_with_an_unknown_role_is_401_token_invalid(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app
        .get(ME, Some(&app.sign(&claims(&["superuser"], 60))))
        .await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_token_without_roles_is_401_token_invalid(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app.get(ME, Some(&app.sign(&claims(&[], 60)))).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_role_without_the_scope_is_403_forbidden(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("dave", &[Role::User]);

    let response = app.get("/api/v1/audit/access-logs", Some(&token)).await;

    let body = assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("audit:read")),
        "{body}"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_first_request_provisions_the_user_and_the_account_named_by_the_token(db: PgPool) {
    let app = spawn_app(db).await;
    let now = chrono::Utc::now().timestamp();
    let token = app.sign(&Claims {
        sub: "erin".into(),
        roles: vec!["creator".into()],
        exp: now + 60,
        iat: now,
        nbf: None,
        account_id: Some("studio-9".into()),
        name: Some("Erin K.".into()),
    });

    let response = app.get(ME, Some(&token)).await;

    assert_eq!(response.status(), StatusCode::OK);
    let row = sqlx::query(
        "select u.display_name, u.roles, a.owner_id, a.available \
         from users u join credit_accounts a on a.owner_id = u.id where u.id = 'erin'",
    )
    .fetch_one(&app.db)
    .await
    .expect("provisioned rows");
    assert_eq!(row.get::<String, _>("display_name"), "Erin K.");
    assert_eq!(
        row.get::<Vec<String>, _>("roles"),
        vec!["creator".to_owned()]
    );
    assert_eq!(row.get::<String, _>("owner_id"), "erin");
    assert_eq!(row.get::<i64, _>("available"), 0);
    let account: String =
        sqlx::query_scalar("select id from credit_accounts where owner_id = 'erin'")
            .fetch_one(&app.db)
            .await
            .expect("account");
    assert_eq!(account, "studio-9");
}
