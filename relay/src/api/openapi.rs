//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the REST API,
//! generated from the handlers' annotations and the body types of
//! `o1_common` (utoipa), so it cannot drift from the code. CI checks the
//! running relay against it with schemathesis (`scripts/openapi-check.sh`).
//! The WebSocket API (`GET /api/websocket`) is not REST and is described
//! in `docs/websocket-api-reference.txt`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::api::rest;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "o1 relay REST API",
        description = "Statistics, inventory and deployments of an o1 relay. Reads need a reader or admin token (`Authorization: Bearer`) unless the relay runs with `auth.browsers = \"open\"`; deployment changes need a publisher or admin token. Live data is on the WebSocket API (`GET /api/websocket`), described in the API reference.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        rest::stats,
        rest::metrics,
        rest::health,
        rest::prometheus,
        rest::hosts,
        rest::list_deployments,
        rest::create_deployment,
        rest::get_deployment,
        rest::deployment_event,
        rest::cancel_deployment,
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "statistics", description = "The seed page's statistics, health and Prometheus metrics"),
        (name = "inventory", description = "Hosts and their applications"),
        (name = "deployments", description = "Deployment creation and events for CI systems"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the operations name.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of `[[auth.token]]` (`o1-relay token create`); the relay keeps only its SHA-256",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON text, built once.
pub fn json() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot build the document: {e}\"}}"))
    })
}

/// `GET /api/openapi.json`: public, like the API reference it completes.
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_rest_route_with_its_security() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/websocket/stats", "get"),
            ("/api/websocket/metrics", "get"),
            ("/api/websocket/health", "get"),
            ("/metrics", "get"),
            ("/api/hosts", "get"),
            ("/api/deployments", "get"),
            ("/api/deployments", "post"),
            ("/api/deployments/{id}", "get"),
            ("/api/deployments/{id}/events", "post"),
            ("/api/deployments/{id}/cancel", "post"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(
            paths["/api/websocket/health"]["get"]["security"].is_null(),
            "health is open"
        );
        assert_eq!(
            paths["/api/deployments"]["post"]["security"][0]["bearer"],
            serde_json::json!([])
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "StatsResponse",
            "DeploymentView",
            "ErrorMessage",
            "HostView",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
    }
}
