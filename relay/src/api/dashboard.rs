//! The dashboard: a web page served by the relay at `/`, built only on the
//! public WebSocket API and REST (its first client). Every asset is
//! embedded in the binary (no CDN; works air-gapped) and served under a
//! name with its content hash, cacheable for a year; the pages themselves
//! are never cached and carry a strict Content-Security-Policy (no inline
//! script or style, no other origin).
//!
//! Routes: `/` (fleet), `/hosts/{host}`, `/logs`, `/deployments`,
//! `/deployments/{id}`: one page whose script draws the route; assets at
//! `/assets/{name}.{hash}.{ext}`. uPlot is vendored from its npm package
//! (`relay/assets/vendor/uplot`, version in the file's first line).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file.
#[derive(Debug)]
struct Asset {
    /// The template's placeholder name, e.g. `app.js`.
    key: &'static str,
    /// `/assets/app.3f2a….js`.
    url: String,
    content_type: &'static str,
    body: &'static [u8],
}

const SOURCES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/app.css"),
    ),
    (
        "uplot.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uplot.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uplot.license",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/vendor/uplot/LICENSE"),
    ),
];

const TEMPLATE: &str = include_str!("../../assets/index.html");

/// The page's policy: scripts, styles, images and connections from this
/// origin only (the WebSocket included), no frames, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Assets {
    files: Vec<Asset>,
    page: String,
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let files: Vec<Asset> = SOURCES
            .iter()
            .map(|(key, content_type, body)| {
                let digest = ring::digest::digest(&ring::digest::SHA256, body);
                let hash: String = digest.as_ref()[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let (stem, ext) = key.rsplit_once('.').unwrap_or((key, "txt"));
                let ext = if *key == "uplot.license" { "txt" } else { ext };
                let stem = if *key == "uplot.license" {
                    "uplot-license"
                } else {
                    stem
                };
                Asset {
                    key,
                    url: format!("/assets/{stem}.{hash}.{ext}"),
                    content_type,
                    body,
                }
            })
            .collect();
        let mut page = TEMPLATE.to_owned();
        for file in &files {
            page = page.replace(&format!("{{{{{}}}}}", file.key), &file.url);
        }
        Assets { files, page }
    })
}

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Every page route: the page, never cached (it names the hashed assets).
pub async fn page() -> Response {
    secured(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            assets().page.as_str(),
        )
            .into_response(),
    )
}

/// `/assets/{name}`: an embedded file by its hashed name, cached for good.
pub async fn asset(Path(name): Path<String>) -> Response {
    let wanted = format!("/assets/{name}");
    match assets().files.iter().find(|f| f.url == wanted) {
        Some(file) => secured(
            (
                [
                    (header::CONTENT_TYPE, file.content_type),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                ],
                file.body,
            )
                .into_response(),
        ),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Total bytes of the page and its assets (a first load, uncompressed).
pub fn first_load_bytes() -> usize {
    let assets = assets();
    assets.page.len()
        + assets
            .files
            .iter()
            .filter(|f| f.key != "uplot.license")
            .map(|f| f.body.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hash_and_stays_small() {
        let assets = assets();
        assert!(!assets.page.contains("{{"), "every placeholder filled");
        for file in &assets.files {
            assert!(
                assets.page.contains(&file.url),
                "{} not in the page",
                file.url
            );
        }
        assert!(
            first_load_bytes() < 200 * 1024,
            "first load {} bytes",
            first_load_bytes()
        );
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe"));
    }
}
