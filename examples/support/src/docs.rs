//! `/openapi.json` and `/docs`: the service's OpenAPI document and the
//! Swagger UI over it, its assets embedded in the binary (the
//! `utoipa-swagger-ui` `vendored` feature: nothing is downloaded at build
//! or run time).
//!
//! A service keeps its own `#[utoipa::path]` handlers (they belong in its
//! document) and answers with these functions.

use std::sync::{Arc, LazyLock};

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Swagger UI's configuration: it reads `/openapi.json`.
static SWAGGER: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
    LazyLock::new(|| Arc::new(utoipa_swagger_ui::Config::from("/openapi.json")));

/// What the page's relative links resolve against: the page is `/docs`,
/// its assets are under `/docs/`.
const DOCS_BASE: &str = "<head>\n    <base href=\"/docs/\">";

/// `document` (rendered once, e.g. in a `LazyLock<String>`) as `application/json`.
pub fn document(document: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

/// The Swagger UI page as `text/html`, or `None` when the vendored page
/// cannot be rendered (logged).
pub fn page() -> Option<Response> {
    let (_, bytes) = swagger_file("index.html")?;
    Some(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            String::from_utf8_lossy(&bytes).replacen("<head>", DOCS_BASE, 1),
        )
            .into_response(),
    )
}

/// The Swagger UI asset `name` (CSS, JavaScript, an image) with its media
/// type, or `None` when there is no such asset.
pub fn asset(name: &str) -> Option<Response> {
    let (content_type, bytes) = swagger_file(name)?;
    Some(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// A file of the vendored Swagger UI: its media type and bytes.
fn swagger_file(name: &str) -> Option<(String, Vec<u8>)> {
    match utoipa_swagger_ui::serve(name, SWAGGER.clone()) {
        Ok(Some(file)) => Some((file.content_type, file.bytes.into_owned())),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, name, "cannot render a Swagger UI file");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(res: Response) -> (String, String) {
        let ct = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (ct, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn the_page_reads_the_document_and_its_assets_are_served() {
        let (ct, html) = text(page().expect("the vendored page")).await;
        assert!(ct.starts_with("text/html"), "{ct}");
        assert!(html.contains("<base href=\"/docs/\">"), "{html}");
        let (_, init) = text(asset("swagger-initializer.js").expect("the initializer")).await;
        assert!(init.contains("/openapi.json"), "{init}");
        let (ct, css) = text(asset("swagger-ui.css").expect("the stylesheet")).await;
        assert!(ct.starts_with("text/css") && !css.is_empty(), "{ct}");
        assert!(asset("no-such-file.js").is_none());
        let (ct, doc) = text(document("{\"openapi\":\"3.1.0\"}")).await;
        assert_eq!(
            (ct.as_str(), doc.as_str()),
            ("application/json", "{\"openapi\":\"3.1.0\"}")
        );
    }
}
