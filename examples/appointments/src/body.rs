//! Request bodies and ids: parsed into typed values or answered with a problem.

use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::problem::ApiError;

/// Longest id accepted in a path or a body.
pub const MAX_ID_LEN: usize = 64;

/// Parses a JSON object body into `T`.
///
/// # Errors
///
/// 400 `invalid-json` when it is not JSON, 422 `validation-failed` naming
/// what is wrong when it does not have `T`'s shape.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::invalid_json(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::validation(vec![("/".into(), e.to_string())]))
}

/// Whether `id` is a plausible id: 1 to 64 letters, digits, `-` or `_`.
pub fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new id `PREFIX-` and 16 hex digits.
pub fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &u[16..])
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// RFC 3339 text of a time, in UTC, to the second (as the database prints it).
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// `"HH:MM"` as minutes after midnight (`"24:00"` is 1440).
pub fn parse_clock(s: &str) -> Option<i32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && (0..=1440).contains(&total)).then_some(total)
}

/// Minutes after midnight as `"HH:MM"`.
pub fn format_clock(minutes: i32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_and_times() {
        assert_eq!(parse_clock("07:30"), Some(450));
        assert_eq!(parse_clock("24:00"), Some(1440));
        assert_eq!(parse_clock("24:01"), None);
        assert_eq!(parse_clock("7:30"), None);
        assert_eq!(format_clock(450), "07:30");
        let t = parse_time("2030-01-02T03:04:05.678+01:00").unwrap();
        assert_eq!(format_time(t), "2030-01-02T02:04:05Z");
        assert!(parse_time("tomorrow").is_none());
        assert!(is_id("E-1") && !is_id("") && !is_id("a b") && !is_id(&"x".repeat(65)));
    }
}
