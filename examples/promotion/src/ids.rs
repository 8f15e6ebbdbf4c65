//! The bounds of what a request names: estimate ids, snapshot versions,
//! and work order ids, checked before anything is looked up,
//! stored or audited.
//!
//! An audit stream is named from the path (`promotion/{estimate_id}/{version}`)
//! and the key is derived from it, so an unbounded path parameter would reach
//! the store, the trail and the log. The service mints its own ids from
//! sequences (`E-1`, `WO-1`), so nothing of another shape can name one: such
//! a path is answered 404 before the idempotency layer, as the story's
//! "invalid input" flow says, and no record or event is made for it.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use crate::problem::ApiError;

/// Longest id the service mints: a prefix and up to 19 digits (a bigint).
const MAX_DIGITS: usize = 19;

/// Whether `id` is `prefix` followed by 1 to 19 ASCII digits.
fn is_minted(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|digits| {
        (1..=MAX_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Whether `id` has the shape of an estimate id: `E-` and 1 to 19 digits.
pub fn is_estimate_id(id: &str) -> bool {
    is_minted(id, "E-")
}

/// Whether `id` has the shape of a work order id: `WO-` and 1 to 19 digits.
pub fn is_work_order_id(id: &str) -> bool {
    is_minted(id, "WO-")
}

/// Longest spelling of a snapshot version accepted: `+` and ten digits
/// (`i32::MAX` has ten), or up to eleven digits with leading zeros.
const MAX_VERSION_LEN: usize = 11;

/// The snapshot version `text` names: a whole number from 1 to
/// 2147483647, as the handler's integer parser reads it, else `None`.
/// `01` and `+1` are spellings of `1`: the idempotency key normalises them
/// to one record and one audit stream (`promotion/E-1/1`).
pub fn snapshot_version(text: &str) -> Option<i32> {
    (text.len() <= MAX_VERSION_LEN)
        .then(|| text.parse::<i32>().ok())
        .flatten()
        .filter(|v| *v >= 1)
}

async fn path_params<S: Send + Sync>(parts: &mut Parts, state: &S) -> HashMap<String, String> {
    Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map(|Path(p)| p)
        .unwrap_or_default()
}

/// The `{estimate_id}` path parameter, of the shape of an estimate id;
/// otherwise the request is answered 404 `estimate-not-found`.
#[derive(Debug, Clone)]
pub(crate) struct EstimateId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for EstimateId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let mut params = path_params(parts, state).await;
        match params.remove("estimate_id") {
            Some(id) if is_estimate_id(&id) => Ok(Self(id)),
            _ => Err(ApiError::not_an_estimate_id()),
        }
    }
}

/// The `{estimate_id}` and `{snapshot_version}` path parameters, both
/// bounded; otherwise 404 `estimate-not-found` / `snapshot-not-found`.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotPath {
    pub(crate) estimate_id: String,
    pub(crate) version: i32,
}

impl<S: Send + Sync> FromRequestParts<S> for SnapshotPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let mut params = path_params(parts, state).await;
        let estimate_id = match params.remove("estimate_id") {
            Some(id) if is_estimate_id(&id) => id,
            _ => return Err(ApiError::not_an_estimate_id()),
        };
        let Some(version) = params
            .get("snapshot_version")
            .and_then(|v| snapshot_version(v))
        else {
            return Err(ApiError::not_a_snapshot_version(&estimate_id));
        };
        Ok(Self {
            estimate_id,
            version,
        })
    }
}

/// Answers a promotion whose path names no snapshot (404) before the
/// idempotency layer sees it: nothing is claimed, stored or audited.
pub(crate) async fn bounded_snapshot_path(
    _: SnapshotPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_ids() {
        for ok in ["E-1", "E-42", &format!("E-{}", "9".repeat(19))] {
            assert!(is_estimate_id(ok), "{ok}");
        }
        for bad in [
            "",
            "E-",
            "E1",
            "e-1",
            "E-1a",
            "E--1",
            "E-nope",
            " E-1",
            "E-١",
            &format!("E-{}", "9".repeat(20)),
            &format!("E-{}", "9".repeat(248)),
        ] {
            assert!(!is_estimate_id(bad), "{bad}");
        }
        assert!(is_work_order_id("WO-7") && !is_work_order_id("E-7"));
    }

    #[test]
    fn snapshot_versions_are_bounded() {
        assert_eq!(snapshot_version("1"), Some(1));
        assert_eq!(snapshot_version("01"), Some(1));
        assert_eq!(snapshot_version("+1"), Some(1));
        assert_eq!(snapshot_version("2147483647"), Some(i32::MAX));
        assert_eq!(snapshot_version("+2147483647"), Some(i32::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "000000000001",
            "1.0",
            "abc",
            "2147483648",
            "99999999999",
        ] {
            assert_eq!(snapshot_version(bad), None, "{bad}");
        }
    }
}
