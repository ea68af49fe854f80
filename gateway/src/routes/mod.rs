//! Every route of the node, registered through `utoipa-axum` so the OpenAPI document is generated
//! from the same registrations as the router and cannot drift from it.

pub mod audit;
pub mod contract;
pub mod credits;
pub mod dashboard;
pub mod dev;
pub mod events;
pub mod export;
pub mod licenses;
pub mod ops;
pub mod payments;
pub mod pricing;
pub mod risk;
pub mod sessions;
pub mod tasks;
pub mod wechat_login;

use crate::state::AppState;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The document's fixed parts; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Realtime hub API",
        description = "HTTP API of the realtime push and session hub: sessions, credits, \
                       licenses, tasks and publishing. Errors are RFC 9457 problem+json with a \
                       stable `code`.",
    ),
    // Enums used only in query parameters are not collected from the paths: listed here.
    components(schemas(
        shared::Problem,
        shared::ErrorCode,
        shared::export::ExportKind,
        shared::payments::OrderStatus,
        export::ExportFormat,
        audit::AuditOutcome,
        events::Interval,
    )),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// All routes of the node. `dev_mode` adds the dev-only login route.
pub fn all(dev_mode: bool) -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(crate::readiness::healthz))
        .routes(routes!(crate::readiness::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_document))
        .routes(routes!(sessions::me))
        .routes(routes!(sessions::put_theme))
        .routes(routes!(audit::list))
        .routes(routes!(audit::get))
        .routes(routes!(audit::task_trail))
        .routes(routes!(audit::account_trail))
        .routes(routes!(export::export))
        .routes(routes!(credits::estimate))
        .routes(routes!(credits::charge))
        .routes(routes!(credits::refund))
        .routes(routes!(credits::adjust))
        .routes(routes!(credits::balance))
        .routes(routes!(credits::ledger))
        .routes(routes!(licenses::check))
        .routes(routes!(licenses::grant))
        .routes(routes!(licenses::get, licenses::update))
        .routes(routes!(licenses::consume))
        .routes(routes!(pricing::list, pricing::create))
        .routes(routes!(pricing::get, pricing::update))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::post_event, tasks::events))
        .routes(routes!(tasks::cancel))
        .routes(routes!(wechat_login::qr))
        .routes(routes!(wechat_login::callback))
        .routes(routes!(payments::recharge))
        .routes(routes!(payments::list))
        .routes(routes!(payments::get))
        .routes(routes!(payments::close))
        .routes(routes!(payments::notify))
        .routes(routes!(payments::reconciliations))
        .routes(routes!(payments::reconciliation))
        .routes(routes!(ops::jobs))
        .routes(routes!(dashboard::dashboard))
        .routes(routes!(events::record))
        .routes(routes!(events::stats))
        .routes(routes!(risk::list, risk::create))
        .routes(routes!(risk::remove))
        .routes(routes!(crate::realtime::publish::publish))
        .routes(routes!(crate::realtime::websocket::websocket))
        .routes(routes!(crate::realtime::sse::sse))
        .routes(routes!(crate::console::root))
        .routes(routes!(crate::console::index))
        .routes(routes!(crate::console::asset))
        .routes(routes!(crate::console::demo));
    if dev_mode {
        router = router.routes(routes!(dev::login));
    }
    router
}
