//! Demo authentication: `Authorization: Bearer <user>:<role>`, and the
//! story's roles and permissions.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::problem::ApiError;

/// May create appointments.
pub const CREATE_APPOINTMENT: &str = "CREATE_APPOINTMENT";
/// May reschedule appointments.
pub const RESCHEDULE_APPOINTMENT: &str = "RESCHEDULE_APPOINTMENT";
/// May override hard scheduling conflicts (with a reason).
pub const OVERRIDE_SCHEDULING_CONFLICT: &str = "OVERRIDE_SCHEDULING_CONFLICT";
/// May approve reschedules inside the minimum notice or beyond the limit.
pub const APPROVE_RESCHEDULE: &str = "APPROVE_RESCHEDULE";

/// Every role and its permissions.
pub const ROLES: &[(&str, &[&str])] = &[
    ("SCHEDULER", &[CREATE_APPOINTMENT, RESCHEDULE_APPOINTMENT]),
    (
        "SERVICE_ADVISOR",
        &[CREATE_APPOINTMENT, RESCHEDULE_APPOINTMENT],
    ),
    (
        "DISPATCHER",
        &[
            CREATE_APPOINTMENT,
            RESCHEDULE_APPOINTMENT,
            OVERRIDE_SCHEDULING_CONFLICT,
        ],
    ),
    (
        "SHOP_MANAGER",
        &[
            CREATE_APPOINTMENT,
            RESCHEDULE_APPOINTMENT,
            OVERRIDE_SCHEDULING_CONFLICT,
            APPROVE_RESCHEDULE,
        ],
    ),
    ("MECHANIC", &[]),
    ("CASHIER", &[]),
];

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id.
    pub user: String,
    /// The role.
    pub role: &'static str,
    permissions: &'static [&'static str],
}

impl Caller {
    /// Parses `Bearer <user>:<role>`.
    ///
    /// # Errors
    ///
    /// 401 when the header is missing or malformed or the role is unknown.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        let Some(value) = value else {
            return Err(ApiError::unauthorized(
                "send Authorization: Bearer <user>:<role>",
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::unauthorized("the Authorization scheme must be Bearer"))?;
        let (user, role) = token
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized("the token must be <user>:<role>"))?;
        let valid_user = !user.is_empty()
            && user.len() <= 64
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid_user {
            return Err(ApiError::unauthorized(
                "the user must be 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        let Some(&(role, permissions)) = ROLES.iter().find(|(r, _)| *r == role) else {
            return Err(ApiError::unauthorized(format!("unknown role {role:?}")));
        };
        Ok(Self {
            user: user.to_owned(),
            role,
            permissions,
        })
    }

    /// Whether the caller's role grants `permission`.
    pub fn may(&self, permission: &str) -> bool {
        self.permissions.contains(&permission)
    }

    /// 403 unless the caller's role grants `permission`.
    ///
    /// # Errors
    ///
    /// 403 `forbidden`.
    pub fn require(&self, permission: &str) -> Result<(), ApiError> {
        if self.may(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(permission))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        Self::parse(
            parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
    }
}

/// Middleware: authenticates before the idempotency layer (401 is answered
/// here, and the caller is the key scope).
pub(crate) async fn authenticate(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match Caller::parse(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    ) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_permissions() {
        let c = Caller::parse(Some("Bearer ann:SHOP_MANAGER")).unwrap();
        assert!(c.may(APPROVE_RESCHEDULE) && c.may(OVERRIDE_SCHEDULING_CONFLICT));
        let s = Caller::parse(Some("Bearer bob:SCHEDULER")).unwrap();
        assert!(s.may(CREATE_APPOINTMENT) && !s.may(OVERRIDE_SCHEDULING_CONFLICT));
        assert!(s.require(APPROVE_RESCHEDULE).is_err());
        for bad in [
            None,
            Some("Basic x"),
            Some("Bearer ann"),
            Some("Bearer :SCHEDULER"),
            Some("Bearer ann:KING"),
            Some("Bearer a b:SCHEDULER"),
        ] {
            assert_eq!(
                Caller::parse(bad).unwrap_err().status,
                axum::http::StatusCode::UNAUTHORIZED
            );
        }
    }
}
