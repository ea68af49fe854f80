//! `spawn_app()`: the real router on a real socket (port 0) over a fresh PostgreSQL database, and
//! typed helpers to call it.

use gateway::auth::{Claims, TokenRequest};
use gateway::settings::Settings;
use gateway::state::AppState;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The JWT secret every test app signs with.
pub const SECRET: &str = "integration-test-secret-0123456789-abcdef";

/// A running test node.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The node's state (token keys, pool).
    pub state: AppState,
    /// The test database.
    pub db: PgPool,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings of a test node: dev mode (so the dev login route exists) and local Redis.
pub fn test_settings() -> Settings {
    let mut settings = Settings {
        jwt_secret: Some(SECRET.into()),
        dev_mode: true,
        redis_url: Some(
            std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
                .into(),
        ),
        node_id: "test-node".into(),
        ..Settings::default()
    };
    // Tests assert exact outcomes under bursts on a shared, busy CI machine: the node does not
    // shed them nor narrow its in-flight limit (shedding and the adaptive limit have their own
    // tests with tight limits).
    settings.ledger.max_queue_ms = 10_000;
    settings.ledger.latency_target_ms = 0;
    settings
}

/// Starts a node over `db` with the default test settings.
pub async fn spawn_app(db: PgPool) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// Starts a node over `db` after `configure` adjusted its settings.
pub async fn spawn_app_with(db: PgPool, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_at(db, |settings, _| configure(settings)).await
}

/// Starts a node over `db` after `configure` adjusted its settings, knowing the node's own
/// address (`http://127.0.0.1:PORT`) already (for callback URLs).
pub async fn spawn_app_at(db: PgPool, configure: impl FnOnce(&mut Settings, &str)) -> TestApp {
    gateway::http_metrics::install().expect("metrics recorder");
    // Server warnings and errors land in the failing test's captured output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .try_init();
    let mut settings = test_settings();
    // Nodes of one test share its database, hence its Redis keys; other tests', and earlier runs
    // of this one (sqlx reuses database names), stay apart: the OID names this very database.
    let oid: String =
        sqlx::query_scalar("select oid::text from pg_database where datname = current_database()")
            .fetch_one(&db)
            .await
            .expect("database oid");
    settings.redis_key_prefix = format!("{}-{oid}", database_name(&db));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    configure(&mut settings, &address);
    let state = AppState::with_pool(settings, db.clone())
        .await
        .expect("state");
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::serve(state.clone(), listener, shutdown.clone()));
    TestApp {
        address,
        state,
        db,
        // Redirects are answers to check, not to follow (the WeChat login callback's 302).
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        shutdown,
    }
}

impl TestApp {
    /// Starts the node's graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A valid token for `sub` with `roles`.
    pub fn token(&self, sub: &str, roles: &[Role]) -> String {
        let request = TokenRequest {
            sub: sub.into(),
            roles: roles.to_vec(),
            account_id: None,
            name: None,
            ttl_seconds: 600,
        };
        self.state.tokens.mint(&request).expect("mint").0
    }

    /// A token with arbitrary claims.
    pub fn sign(&self, claims: &Claims) -> String {
        self.state.tokens.sign(claims).expect("sign")
    }

    /// A request builder for `method path` with an optional bearer token.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.address));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.request(Method::GET, path, token)
            .send()
            .await
            .expect("GET")
    }

    /// `POST path` with a JSON body and an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.request(Method::POST, path, Some(token))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `method path` with a JSON body.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        self.request(method, path, token)
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

/// Asserts a problem+json response with `status` and `code`; returns its body.
pub async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(actual, status, "{body}");
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["title"]
            .as_str()
            .is_some_and(|title| !title.is_empty()),
        "{body}"
    );
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|kind| kind.ends_with(code)),
        "{body}"
    );
    assert!(
        !header_id.is_empty() && body["request_id"] == header_id.as_str(),
        "{body}"
    );
    body
}

/// A `postgres://` URL for database `name` on the server of `DATABASE_URL`.
pub fn database_url_for(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (scheme, rest) = base.split_once("://").expect("URL has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let query = rest
        .split_once('?')
        .map(|(_, query)| format!("?{query}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}/{name}{query}")
}

/// The name of the database behind `db`.
pub fn database_name(db: &PgPool) -> String {
    db.connect_options()
        .get_database()
        .expect("database name")
        .to_owned()
}

/// Provisions `user` (its first request) and funds its account through `/credits/adjust`;
/// returns its token.
pub async fn funded_user(app: &TestApp, user: &str, credits: i64) -> String {
    let token = app.token(user, &[Role::User]);
    assert_eq!(
        app.get("/api/v1/sessions/me", Some(&token)).await.status(),
        StatusCode::OK
    );
    if credits > 0 {
        let finance = app.token("finance-1", &[Role::Finance]);
        let body = json!({"account_id": user, "amount": credits, "reason": "test funding"});
        let response = app
            .request(Method::POST, "/api/v1/credits/adjust", Some(&finance))
            .header("idempotency-key", format!("fund-{user}"))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    token
}

/// A flat price rule for `task_type`: `per_unit` credits per unit, no base, no peak, no history.
pub async fn flat_price(db: &PgPool, task_type: &str, per_unit: i64) {
    sqlx::query(
        "insert into price_rules (id, task_type, base_credits, per_unit_credits, history_weight_bp)          values ($1, $1, 0, $2, 0)",
    )
    .bind(task_type)
    .bind(per_unit)
    .execute(db)
    .await
    .expect("price rule");
}
