//! RFC 9457 `application/problem+json` answers.
//!
//! A [`Problem`] carries the service's `type` base URI, a stable slug (the
//! last segment of `type`), a title that is the same for every occurrence
//! of the type, and this occurrence's `detail`. A service keeps its own
//! error type with one constructor per situation and turns it into a
//! `Problem` to answer; the rendering, the headers that go with a status
//! and the database-failure classification live here once.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// A problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// The service's base of `type` URIs, ending in `/`.
    pub base: &'static str,
    /// Last segment of the `type` URI.
    pub slug: &'static str,
    /// The problem's title (the same for every occurrence of the type).
    pub title: &'static str,
    /// What happened this time.
    pub detail: String,
    /// Extension members, in order.
    pub extensions: Vec<(&'static str, Value)>,
    /// A `Location` header (the existing resource of a conflict).
    pub location: Option<String>,
    /// A `Retry-After` header in seconds; a 503 gets `1` when unset.
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `status` with the stable `slug` and `title` under `base`.
    pub fn new(
        base: &'static str,
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            base,
            slug,
            title,
            detail: detail.into(),
            extensions: Vec::new(),
            location: None,
            retry_after: None,
        }
    }

    /// Adds the extension member `name`.
    #[must_use]
    pub fn with(mut self, name: &'static str, value: Value) -> Self {
        self.extensions.push((name, value));
        self
    }

    /// Sets the `Location` header.
    #[must_use]
    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// The full `type` URI.
    pub fn type_uri(&self) -> String {
        format!("{}{}", self.base, self.slug)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), json!(self.type_uri()));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        for (name, value) in &self.extensions {
            body.insert((*name).to_owned(), value.clone());
        }
        Value::Object(body)
    }
}

/// `errors` of a validation problem: `[{pointer, detail}]`, one per broken rule.
pub fn field_errors(errors: &[(String, String)]) -> Value {
    Value::Array(
        errors
            .iter()
            .map(|(pointer, detail)| json!({"pointer": pointer, "detail": detail}))
            .collect(),
    )
}

/// Whether `e` means the database is unreachable or overloaded (answer 503,
/// retry later) rather than a bug or a broken rule (answer 500). Logs it
/// either way: a warning for the first, an error for the second.
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => {
            tracing::warn!(error = %e, "database unavailable");
            true
        }
        _ => {
            tracing::error!(error = %e, "database error");
            false
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body().to_string()).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(v) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(header::LOCATION, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry = self
            .retry_after
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(secs) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Declares a service's error type: a newtype over a boxed [`Problem`]
/// (boxed, so a `Result` stays small) whose fields read through `Deref`,
/// with `new(status, slug, title, detail)` under the service's base URI,
/// `with(name, value)` for extension members, and `IntoResponse`. The
/// service adds one constructor per situation in its own `impl`, so every
/// problem type it answers is spelled in its own source.
///
/// ```
/// use axum::http::StatusCode;
///
/// const BASE: &str = "https://idempotency.rs/problems/example/";
/// example_support::service_error! {
///     /// An error answer of the service.
///     pub struct ApiError under BASE;
/// }
///
/// impl ApiError {
///     /// 404: no such thing.
///     pub fn not_found(id: &str) -> Self {
///         Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("there is no {id}"))
///     }
/// }
///
/// let e = ApiError::not_found("x").with("id", serde_json::json!("x"));
/// assert_eq!(e.type_uri(), "https://idempotency.rs/problems/example/not-found");
/// assert_eq!(e.status, StatusCode::NOT_FOUND);
/// ```
#[macro_export]
macro_rules! service_error {
    ($(#[$meta:meta])* $vis:vis struct $name:ident under $base:expr;) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name(pub ::std::boxed::Box<$crate::problem::Problem>);

        impl ::std::ops::Deref for $name {
            type Target = $crate::problem::Problem;
            fn deref(&self) -> &$crate::problem::Problem {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::problem::Problem {
                &mut self.0
            }
        }

        impl $name {
            /// A problem of `status` with the stable `slug` and `title`.
            pub fn new(
                status: $crate::__private::axum::http::StatusCode,
                slug: &'static str,
                title: &'static str,
                detail: impl ::std::convert::Into<::std::string::String>,
            ) -> Self {
                Self(::std::boxed::Box::new($crate::problem::Problem::new(
                    $base, status, slug, title, detail,
                )))
            }

            /// Adds the extension member `name`.
            #[must_use]
            pub fn with(self, name: &'static str, value: $crate::__private::serde_json::Value) -> Self {
                Self(::std::boxed::Box::new(self.0.with(name, value)))
            }
        }

        impl $crate::__private::axum::response::IntoResponse for $name {
            fn into_response(self) -> $crate::__private::axum::response::Response {
                $crate::__private::axum::response::IntoResponse::into_response(*self.0)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const BASE: &str = "https://idempotency.rs/problems/test/";

    async fn render(p: Problem) -> (Response, Value) {
        let res = p.into_response();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, axum::body::Body::empty()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn renders_rfc_9457_with_extensions_and_headers() {
        let p = Problem::new(
            BASE,
            StatusCode::CONFLICT,
            "taken",
            "Already taken",
            "x is taken",
        )
        .with("errors", field_errors(&[("/a".into(), "bad".into())]))
        .at("/things/1");
        assert_eq!(p.type_uri(), format!("{BASE}taken"));
        let (res, body) = render(p).await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(res.headers()[header::LOCATION], "/things/1");
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(
            body,
            json!({"type": format!("{BASE}taken"), "title": "Already taken", "status": 409,
                   "detail": "x is taken", "errors": [{"pointer": "/a", "detail": "bad"}]})
        );
    }

    #[tokio::test]
    async fn status_headers() {
        let (res, _) = render(Problem::new(
            BASE,
            StatusCode::SERVICE_UNAVAILABLE,
            "u",
            "U",
            "",
        ))
        .await;
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let mut p = Problem::new(BASE, StatusCode::CONFLICT, "busy", "Busy", "");
        p.retry_after = Some(3);
        let (res, _) = render(p).await;
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        let (res, _) = render(Problem::new(BASE, StatusCode::UNAUTHORIZED, "a", "A", "")).await;
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn database_failures_are_classified() {
        assert!(database_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!database_unavailable(&sqlx::Error::RowNotFound));
    }
}
