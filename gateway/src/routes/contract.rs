//! Completes the generated OpenAPI document with what every operation can answer besides its own
//! outcomes, so the document tells the truth to generated clients and to the schemathesis gate:
//! problem+json answers for authentication (401/403), bodies (400/413/415/422), paths and queries
//! (400, 404, 422 `invalid_text`), idempotency keys (400/409/422), load (429), timeouts (408) and
//! unavailability (503), and the `Idempotency-Key` header's exact shape. One place, derived from
//! each operation's own shape, so a new route gets it for free.

use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// The shape of an `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[\\x21-\\x7e]{1,255}$";

fn problem(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
        .into()
}

fn add(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| problem(description));
}

fn is_in(parameter: &Parameter, place: &ParameterIn) -> bool {
    std::mem::discriminant(&parameter.parameter_in) == std::mem::discriminant(place)
}

/// Adds the answers every operation of `path` can give, by its shape.
fn complete_operation(path: &str, operation: &mut Operation) {
    let parameters = operation.parameters.clone().unwrap_or_default();
    let authenticated = operation
        .security
        .as_ref()
        .is_some_and(|security| !security.is_empty());
    let has_body = operation.request_body.is_some();
    let has_path = parameters.iter().any(|p| is_in(p, &ParameterIn::Path));
    let has_query = parameters.iter().any(|p| is_in(p, &ParameterIn::Query));
    let keyed = parameters
        .iter()
        .any(|p| is_in(p, &ParameterIn::Header) && p.name.eq_ignore_ascii_case("idempotency-key"));
    if !path.starts_with("/api/") {
        return;
    }
    add(
        operation,
        "422",
        "`invalid_text`: a path, query or body holds a NUL character; or the request breaks a rule",
    );
    add(
        operation,
        "408",
        "`request_timeout`: the request took too long",
    );
    add(
        operation,
        "503",
        "`service_unavailable`: a dependency is down; retry later",
    );
    if authenticated {
        add(
            operation,
            "401",
            "`token_missing`, `token_invalid` or `token_expired`",
        );
        add(
            operation,
            "403",
            "`forbidden`: the caller's roles lack the scope, or the token's account is not its own",
        );
        add(
            operation,
            "429",
            "`too_many_requests`: too much queued; retry later",
        );
    }
    if has_body {
        add(operation, "400", "`malformed_json`: the body is not JSON");
        add(
            operation,
            "413",
            "`payload_too_large`: the body is over the limit",
        );
        add(
            operation,
            "415",
            "`unsupported_media_type`: the body is not declared `application/json`",
        );
    }
    if has_path || has_query {
        add(operation, "400", "`invalid_path` or `invalid_query`");
    }
    if has_path {
        add(operation, "404", "`not_found`");
    }
    if keyed {
        add(
            operation,
            "400",
            "`idempotency_key_required` or `invalid_header`: the `Idempotency-Key` is missing or malformed",
        );
        add(
            operation,
            "409",
            "`idempotency_key_in_flight`: a request with this key is still being processed",
        );
        add(
            operation,
            "422",
            "`idempotency_key_reused`: this key was used with another body",
        );
        if let Some(parameters) = &mut operation.parameters {
            for parameter in parameters.iter_mut().filter(|p| {
                is_in(p, &ParameterIn::Header) && p.name.eq_ignore_ascii_case("idempotency-key")
            }) {
                parameter.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
                        .min_length(Some(1))
                        .max_length(Some(255))
                        .into(),
                );
            }
        }
    }
}

/// Completes every operation of the document.
pub fn complete(openapi: &mut OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(path, operation);
        }
    }
}
