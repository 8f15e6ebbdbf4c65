//! Outcome policy: what the layer does with the response of an execution.

use std::ops::RangeInclusive;

use http::header::CACHE_CONTROL;
use http::{HeaderMap, StatusCode};

/// What happens to the record once the inner service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeAction {
    /// Store the response; every later request with the key replays it.
    Store,
    /// Forget the key: nothing worth keeping happened, a corrected retry runs afresh.
    Release,
    /// Mark the attempt failed, retryable: the next request with the key runs
    /// again, until max attempts; the last allowed attempt fails terminally.
    FailRetryable,
    /// Mark the attempt failed for good: later requests get `operation-failed`.
    FailTerminal,
}

/// Which statuses are stored and replayed, which release the key and which
/// mark a retryable failure.
///
/// The default table:
///
/// | status | action |
/// |---|---|
/// | 1xx, 2xx, 3xx | [`Store`](OutcomeAction::Store) (replayed) |
/// | 400, 401, 403, 405, 406, 408, 411, 413, 414, 415, 422, 429, 431 | [`Release`](OutcomeAction::Release) (envelope and router rejections: a corrected retry runs) |
/// | other 4xx (404, 409, 410, ...) | [`Store`](OutcomeAction::Store) (business outcomes are replayed) |
/// | 5xx | [`FailRetryable`](OutcomeAction::FailRetryable) |
/// | any response carrying the [`ReleaseKey`] extension | [`Release`](OutcomeAction::Release) (the handler says so) |
/// | any status with `Cache-Control: no-store` | as its status; [`Release`](OutcomeAction::Release) only with [`release_on_no_store(true)`](OutcomePolicy::release_on_no_store) |
///
/// A panic or an error of the inner service also marks a retryable failure.
///
/// `Cache-Control: no-store` does not release by default: security-header
/// layers add it to every API response, which would silently turn
/// idempotency off. A handler that wants its key released says so with the
/// typed [`ReleaseKey`] response extension.
///
/// ```
/// use http::StatusCode;
/// use idempotency_tower::{OutcomeAction, OutcomePolicy};
///
/// let policy = OutcomePolicy::default()
///     // A conflict in this API is transient: let the client retry with the same key.
///     .with(StatusCode::CONFLICT, OutcomeAction::Release)
///     // 501 will never work: do not run it again.
///     .with(StatusCode::NOT_IMPLEMENTED, OutcomeAction::FailTerminal);
/// assert_eq!(policy.action_for(StatusCode::CONFLICT), OutcomeAction::Release);
/// assert_eq!(policy.action_for(StatusCode::CREATED), OutcomeAction::Store);
/// assert_eq!(policy.action_for(StatusCode::BAD_GATEWAY), OutcomeAction::FailRetryable);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomePolicy {
    /// Actions for statuses 100..=999, indexed by `status - 100`.
    table: Vec<OutcomeAction>,
    release_on_no_store: bool,
}

/// The statuses the default policy releases.
pub const DEFAULT_RELEASED: [u16; 13] = [
    400, 401, 403, 405, 406, 408, 411, 413, 414, 415, 422, 429, 431,
];

/// A response extension: the handler asks the layer to release the key
/// (nothing worth keeping happened; a retry with the same key runs afresh),
/// whatever the status.
///
/// ```
/// use axum::{Extension, http::StatusCode, response::IntoResponse};
/// use idempotency_tower::ReleaseKey;
///
/// async fn handler() -> impl IntoResponse {
///     // The quote expired: let the client retry with the same key.
///     (StatusCode::OK, Extension(ReleaseKey), "quote expired, ask again")
/// }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleaseKey;

impl Default for OutcomePolicy {
    fn default() -> Self {
        let table = (100u16..=999)
            .map(|s| match s {
                s if DEFAULT_RELEASED.contains(&s) => OutcomeAction::Release,
                500..=599 => OutcomeAction::FailRetryable,
                _ => OutcomeAction::Store,
            })
            .collect();
        Self {
            table,
            release_on_no_store: false,
        }
    }
}

impl OutcomePolicy {
    /// Sets the action for one status.
    #[must_use]
    pub fn with(mut self, status: StatusCode, action: OutcomeAction) -> Self {
        self.table[usize::from(status.as_u16() - 100)] = action;
        self
    }

    /// Sets the action for a range of statuses, e.g. `500..=599`. Values
    /// outside 100..=999 are ignored.
    #[must_use]
    pub fn with_range(mut self, statuses: RangeInclusive<u16>, action: OutcomeAction) -> Self {
        for s in statuses {
            if (100..=999).contains(&s) {
                self.table[usize::from(s - 100)] = action;
            }
        }
        self
    }

    /// Whether a response with `Cache-Control: no-store` releases the key
    /// (default `false`: security-header layers add `no-store` to every
    /// response; prefer the [`ReleaseKey`] extension).
    #[must_use]
    pub fn release_on_no_store(mut self, yes: bool) -> Self {
        self.release_on_no_store = yes;
        self
    }

    /// The action for a status, ignoring headers.
    pub fn action_for(&self, status: StatusCode) -> OutcomeAction {
        self.table[usize::from(status.as_u16() - 100)]
    }

    /// The action for a response's head: a response carrying the
    /// [`ReleaseKey`] extension releases the key; otherwise [`classify`](Self::classify).
    pub fn classify_response(&self, head: &http::response::Parts) -> OutcomeAction {
        if head.extensions.get::<ReleaseKey>().is_some() {
            return OutcomeAction::Release;
        }
        self.classify(head.status, &head.headers)
    }

    /// The action for a response.
    pub fn classify(&self, status: StatusCode, headers: &HeaderMap) -> OutcomeAction {
        if self.release_on_no_store && has_no_store(headers) {
            return OutcomeAction::Release;
        }
        self.action_for(status)
    }
}

fn has_no_store(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|d| {
                d.trim()
                    .split('=')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case("no-store"))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn default_table() {
        let p = OutcomePolicy::default();
        let h = HeaderMap::new();
        for s in [200, 201, 204, 301, 302, 404, 409, 410, 402] {
            assert_eq!(
                p.classify(StatusCode::from_u16(s).unwrap(), &h),
                OutcomeAction::Store,
                "{s}"
            );
        }
        for s in DEFAULT_RELEASED {
            assert_eq!(
                p.classify(StatusCode::from_u16(s).unwrap(), &h),
                OutcomeAction::Release,
                "{s}"
            );
        }
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(
                p.classify(StatusCode::from_u16(s).unwrap(), &h),
                OutcomeAction::FailRetryable,
                "{s}"
            );
        }
    }

    #[test]
    fn no_store_releases_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private, No-Store"));
        let p = OutcomePolicy::default();
        assert_eq!(p.classify(StatusCode::CREATED, &h), OutcomeAction::Store);
        let p = p.release_on_no_store(true);
        assert_eq!(p.classify(StatusCode::CREATED, &h), OutcomeAction::Release);
        let mut other = HeaderMap::new();
        other.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("no-cache, max-age=0"),
        );
        assert_eq!(
            OutcomePolicy::default().classify(StatusCode::OK, &other),
            OutcomeAction::Store
        );
    }

    #[test]
    fn router_rejections_release() {
        let p = OutcomePolicy::default();
        for s in [405, 406, 411, 414, 431] {
            let status = StatusCode::from_u16(s).unwrap();
            assert_eq!(p.action_for(status), OutcomeAction::Release, "{s}");
        }
    }

    #[test]
    fn release_extension_releases_any_status() {
        let p = OutcomePolicy::default();
        let (mut head, ()) = http::Response::builder()
            .status(StatusCode::CREATED)
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(p.classify_response(&head), OutcomeAction::Store);
        head.extensions.insert(ReleaseKey);
        assert_eq!(p.classify_response(&head), OutcomeAction::Release);
    }

    #[test]
    fn overrides() {
        let p = OutcomePolicy::default()
            .with_range(400..=499, OutcomeAction::FailTerminal)
            .with_range(1000..=1001, OutcomeAction::Store)
            .with(StatusCode::IM_A_TEAPOT, OutcomeAction::Store);
        assert_eq!(
            p.action_for(StatusCode::NOT_FOUND),
            OutcomeAction::FailTerminal
        );
        assert_eq!(p.action_for(StatusCode::IM_A_TEAPOT), OutcomeAction::Store);
    }
}
