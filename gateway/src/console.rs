//! The web console: a single-page application of plain ES modules (`gateway/console/app/`, no build
//! step), embedded in the binary and served at `/console/` by every node. It uses only the public
//! API and the realtime endpoint (through the official `centrifuge` SDK, vendored byte for byte from
//! the npm package pinned in `gateway/console/package-lock.json`).
//!
//! Caching: the assets are served under `/console/assets/{version}/`, where `version` is a hash of
//! every embedded file, so they are immutable for a year; `index.html` (which names the version) is
//! revalidated on every load. Every console response carries a Content-Security-Policy that allows
//! scripts, styles, images and connections from this origin only (plus `data:` images: the recharge
//! QR code is rendered in the page).

use crate::error::{ApiError, ApiResult};
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::LazyLock;

/// The console's files.
#[derive(rust_embed::Embed)]
#[folder = "console/app/"]
struct Assets;

/// What the console may load: its own scripts, styles, images (and the `data:` QR code),
/// connections to this origin (the API, and the WebSocket on the same host), nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Cache lifetime of versioned assets.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Where `index.html` names the versioned asset folder.
const ASSETS_PLACEHOLDER: &str = "%ASSETS%";

/// The hash of every embedded file (names and contents), 16 hex digits.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut names: Vec<Cow<'static, str>> = Assets::iter().collect();
    names.sort();
    let mut hash = Sha256::new();
    for name in names {
        if let Some(file) = Assets::get(&name) {
            hash.update((name.len() as u64).to_be_bytes());
            hash.update(name.as_bytes());
            hash.update((file.data.len() as u64).to_be_bytes());
            hash.update(&file.data);
        }
    }
    hex::encode(&hash.finalize()[..8])
});

/// `index.html` pointing at this version's assets.
static INDEX: LazyLock<String> = LazyLock::new(|| {
    let page = Assets::get("index.html")
        .map(|file| String::from_utf8_lossy(&file.data).into_owned())
        .unwrap_or_default();
    page.replace(ASSETS_PLACEHOLDER, &format!("/console/assets/{}", *VERSION))
});

/// The content type of an asset, by its extension.
fn content_type(name: &str) -> Option<&'static str> {
    let extension = name.rsplit_once('.')?.1;
    Some(match extension {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "txt" | "LICENSE" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// Headers on every console response.
fn secured(mut response: Response, cache: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// `/console` → `/console/`.
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 308, description = "To `/console/`")))]
pub async fn root() -> Response {
    redirect("/console/")
}

/// The console's page: loads the versioned assets. Revalidated on every load (`no-cache`).
#[utoipa::path(get, path = "/console/", tag = "console",
    responses((status = 200, description = "The console", content_type = "text/html")))]
pub async fn index() -> Response {
    let response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX.as_str(),
    )
        .into_response();
    secured(response, "no-cache")
}

/// A console asset. Immutable when `version` is the node's; an asset asked for under another
/// version (a page loaded from a node of another release) is served but not cached.
#[utoipa::path(get, path = "/console/assets/{version}/{file}", tag = "console",
    params(
        ("version" = String, Path, description = "The console's version hash"),
        ("file" = String, Path, description = "The file name")),
    responses(
        (status = 200, description = "The file"),
        (status = 404, body = shared::Problem, content_type = "application/problem+json")))]
pub async fn asset(Path((version, file)): Path<(String, String)>) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("no such console file");
    if file == "index.html" {
        return Err(not_found());
    }
    let content_type = content_type(&file).ok_or_else(not_found)?;
    let asset = Assets::get(&file).ok_or_else(not_found)?;
    let cache = if version == *VERSION {
        IMMUTABLE
    } else {
        "no-cache"
    };
    let response = (
        [(header::CONTENT_TYPE, content_type)],
        asset.data.into_owned(),
    )
        .into_response();
    Ok(secured(response, cache))
}

/// The old demo page's address: to the console.
#[utoipa::path(get, path = "/demo", tag = "console",
    responses((status = 308, description = "To `/console/`")))]
pub async fn demo() -> Response {
    redirect("/console/")
}

fn redirect(location: &'static str) -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static(location))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_content_type_and_the_page_names_the_version() {
        for name in Assets::iter() {
            assert!(
                name == "index.html" || content_type(&name).is_some(),
                "{name} has no content type"
            );
        }
        assert_eq!(VERSION.len(), 16);
        assert!(INDEX.contains(&format!("/console/assets/{}/app.js", *VERSION)));
        assert!(!INDEX.contains(ASSETS_PLACEHOLDER));
    }

    #[test]
    fn every_error_code_has_a_sentence_in_english_and_chinese() {
        let file = Assets::get("messages.json").expect("messages.json is embedded");
        let messages: serde_json::Value = serde_json::from_slice(&file.data).expect("valid JSON");
        let schema = serde_json::to_value(<shared::ErrorCode as utoipa::PartialSchema>::schema())
            .expect("schema");
        let codes = schema["enum"].as_array().expect("ErrorCode is an enum");
        assert!(codes.len() >= 40, "{schema}");
        for code in codes {
            let key = format!("error.{}", code.as_str().expect("a string"));
            for lang in ["en", "zh"] {
                assert!(
                    messages[lang][&key]
                        .as_str()
                        .is_some_and(|text| !text.is_empty()),
                    "{lang} has no {key}"
                );
            }
        }
        let english = messages["en"].as_object().expect("en");
        let chinese = messages["zh"].as_object().expect("zh");
        let missing: Vec<_> = english
            .keys()
            .filter(|key| !chinese.contains_key(*key))
            .collect();
        assert!(missing.is_empty(), "zh lacks {missing:?}");
    }
}
