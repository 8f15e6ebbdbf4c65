//! The answers the layer makes itself: RFC 9457 `application/problem+json`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderName, Response, StatusCode};

use crate::body::ResponseBody;
use crate::config::IDEMPOTENCY_KEY;
use crate::key::KeyRejection;

/// Base of every problem `type` URI the layer emits.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/";

/// Media type of every answer the layer makes itself.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The problems the layer answers with. Each has a stable `type` URI under
/// [`PROBLEM_BASE`], a title and a status.
///
/// | type | status | when |
/// |---|---|---|
/// | `key-missing` | 400 | the key is required and the request has none |
/// | `key-invalid` | 400 | the key is empty, over 255 characters, holds a non-printable character, is a malformed sf-string, appears twice, or cannot be derived |
/// | `invalid-body` | 400 | the request body could not be read, is not JSON when the fingerprint or the key needs JSON, or is JSON with a member name repeated in one object (at any depth) |
/// | `in-flight` | 409 | a request with this key is still executing (`Retry-After` says when to try again) |
/// | `request-too-large` | 413 | the request body is over the cap; nothing was stored |
/// | `key-reused` | 422 | the key was first used with another payload, method or path |
/// | `operation-failed` | 500 | an earlier attempt with this key failed and no attempts are left; the failure is replayed |
/// | `record-corrupted` | 500 | the stored record cannot be used; an operator must resolve it |
/// | `scope-missing` | 500 | a [scope](crate::IdempotencyLayer::scope) is configured but the request has none (the authentication layer is missing or placed after this one); nothing ran, nothing was stored |
/// | `store-unavailable` | 503 | the idempotency store failed or timed out (`Retry-After` set) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemType {
    /// 400: the key is required and missing.
    KeyMissing,
    /// 400: the key is malformed.
    KeyInvalid,
    /// 400: the body could not be read or fingerprinted.
    InvalidBody,
    /// 409: the same key is executing now.
    InFlight,
    /// 413: the request body is over the cap.
    RequestTooLarge,
    /// 422: same key, different request.
    KeyReused,
    /// 500: an earlier attempt failed terminally.
    OperationFailed,
    /// 500: the record is corrupted.
    RecordCorrupted,
    /// 500: the configured scope source found no scope for the request.
    ScopeMissing,
    /// 503: the store is down or slow.
    StoreUnavailable,
}

impl ProblemType {
    /// Every problem type, in the order of the table above.
    pub const ALL: [Self; 10] = [
        Self::KeyMissing,
        Self::KeyInvalid,
        Self::InvalidBody,
        Self::InFlight,
        Self::RequestTooLarge,
        Self::KeyReused,
        Self::OperationFailed,
        Self::RecordCorrupted,
        Self::ScopeMissing,
        Self::StoreUnavailable,
    ];

    /// The last segment of the `type` URI.
    pub const fn slug(self) -> &'static str {
        match self {
            Self::KeyMissing => "key-missing",
            Self::KeyInvalid => "key-invalid",
            Self::InvalidBody => "invalid-body",
            Self::InFlight => "in-flight",
            Self::RequestTooLarge => "request-too-large",
            Self::KeyReused => "key-reused",
            Self::OperationFailed => "operation-failed",
            Self::RecordCorrupted => "record-corrupted",
            Self::ScopeMissing => "scope-missing",
            Self::StoreUnavailable => "store-unavailable",
        }
    }

    /// The full `type` URI, e.g. `https://idempotency.rs/problems/key-missing`.
    pub fn uri(self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug())
    }

    /// The HTTP status this problem is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::KeyMissing | Self::KeyInvalid | Self::InvalidBody => StatusCode::BAD_REQUEST,
            Self::InFlight => StatusCode::CONFLICT,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::OperationFailed | Self::RecordCorrupted | Self::ScopeMissing => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The problem's `title`: the same for every occurrence (RFC 9457), so
    /// it names no header; the `detail` names the `Idempotency-Key` header
    /// only when the key came from it, and speaks of "the same resource"
    /// for a derived key.
    pub const fn title(self) -> &'static str {
        match self {
            Self::KeyMissing => "Idempotency key is missing",
            Self::KeyInvalid => "Idempotency key is invalid",
            Self::InvalidBody => "Request body cannot be used",
            Self::InFlight => "A request with the same idempotency key is in flight",
            Self::RequestTooLarge => "Request body is too large",
            Self::KeyReused => "Request differs from the first one with the same idempotency key",
            Self::OperationFailed => "An earlier request with the same idempotency key failed",
            Self::RecordCorrupted => "Idempotency record is corrupted",
            Self::ScopeMissing => "Idempotency scope is missing",
            Self::StoreUnavailable => "Idempotency store is unavailable",
        }
    }
}

/// A problem about to be answered.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub(crate) kind: ProblemType,
    pub(crate) detail: String,
    pub(crate) retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The answer to a key the source refused: 400 `key-invalid`, or 400
    /// `invalid-body` when the JSON body the key is derived from repeats a
    /// member name (the body is at fault, not the key).
    pub(crate) fn key_rejected(rejection: &KeyRejection) -> Self {
        let kind = match rejection {
            KeyRejection::Invalid(idempotency_core::KeyError::DuplicateKey { .. }) => {
                ProblemType::InvalidBody
            }
            _ => ProblemType::KeyInvalid,
        };
        Self::new(kind, rejection.to_string())
    }

    /// The answer to a request the configured scope source found no scope for.
    pub(crate) fn scope_missing() -> Self {
        Self::new(
            ProblemType::ScopeMissing,
            "the server could not tell whose request this is, so it was not run; \
             this is a server configuration error",
        )
    }

    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub(crate) fn body(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            r#type: String,
            title: &'static str,
            status: u16,
            detail: &'a str,
        }
        let body = Body {
            r#type: self.kind.uri(),
            title: self.kind.title(),
            status: self.kind.status().as_u16(),
            detail: &self.detail,
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let mut res = Response::new(ResponseBody::full(self.body()));
        *res.status_mut() = self.kind.status();
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(after) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
        res
    }
}

/// The `detail` texts that name the key: after the header it came from, or,
/// for a derived key, as "the same resource" (the client sent no key).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wording<'a> {
    header: Option<&'a HeaderName>,
}

impl<'a> Wording<'a> {
    /// Wording for a key read from `header`, or derived when `None`.
    pub(crate) fn new(header: Option<&'a HeaderName>) -> Self {
        Self { header }
    }

    /// The header as people write it: `Idempotency-Key` for the standard one.
    fn header_name(&self) -> Option<&'a str> {
        self.header.map(|h| {
            if *h == IDEMPOTENCY_KEY {
                "Idempotency-Key"
            } else {
                h.as_str()
            }
        })
    }

    pub(crate) fn key_missing(&self) -> Problem {
        let detail = match self.header_name() {
            Some(h) => format!("this request requires an {h} header"),
            None => "this request carries nothing its idempotency key is derived from".to_owned(),
        };
        Problem::new(ProblemType::KeyMissing, detail)
    }

    pub(crate) fn in_flight(&self) -> Problem {
        let detail = match self.header_name() {
            Some(h) => format!("a request with this {h} is being processed; retry later"),
            None => "a request for the same resource is being processed; retry later".to_owned(),
        };
        Problem::new(ProblemType::InFlight, detail)
    }

    pub(crate) fn key_reused(&self) -> Problem {
        let detail = match self.header_name() {
            Some(h) => format!(
                "this {h} was first used with a different request (payload, method or path)"
            ),
            None => "an earlier request for the same resource differed from this one \
                     (payload, query or path); this one was not run"
                .to_owned(),
        };
        Problem::new(ProblemType::KeyReused, detail)
    }

    pub(crate) fn operation_failed(&self, reason: &str) -> Problem {
        let detail = match self.header_name() {
            Some(h) => format!(
                "an earlier request with this {h} failed and will not run again: {reason}; use a new key"
            ),
            None => format!(
                "an earlier request for the same resource failed and will not run again: {reason}"
            ),
        };
        Problem::new(ProblemType::OperationFailed, detail)
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_stable_and_distinct() {
        let uris: std::collections::HashSet<_> = ProblemType::ALL.iter().map(|p| p.uri()).collect();
        assert_eq!(uris.len(), ProblemType::ALL.len());
        assert_eq!(
            ProblemType::KeyMissing.uri(),
            "https://idempotency.rs/problems/key-missing"
        );
        assert_eq!(
            ProblemType::KeyReused.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            ProblemType::ScopeMissing.uri(),
            "https://idempotency.rs/problems/scope-missing"
        );
        assert_eq!(
            ProblemType::ScopeMissing.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        for p in ProblemType::ALL {
            assert!(!p.title().contains("Idempotency-Key"), "{p:?}");
        }
    }

    #[test]
    fn body_is_rfc9457() {
        let p =
            Problem::new(ProblemType::InFlight, "later").retry_after(Duration::from_millis(1500));
        let res = p.clone().into_response::<http_body_util::Empty<Bytes>>();
        assert_eq!(res.status(), 409);
        assert_eq!(res.headers()[CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        let v: serde_json::Value = serde_json::from_slice(&p.body()).unwrap();
        assert_eq!(v["type"], "https://idempotency.rs/problems/in-flight");
        assert_eq!(v["status"], 409);
        assert_eq!(v["detail"], "later");
        assert!(v["title"].is_string());
        assert!(
            p.body()
                .starts_with(br#"{"type":"https://idempotency.rs/problems/in-flight","title":"#)
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3001)), 4);
    }
}
