//! Why a command did not do its job, and the exit code that says so.

use std::process::ExitCode;

use idempotency_core::StoreError;

/// A command's failure. Each kind has its own exit code (the README's table).
#[derive(Debug)]
pub(crate) enum Failure {
    /// 1: no record (or nothing expired, or no audit event) matched.
    NothingMatched(String),
    /// 2: the arguments are wrong.
    Usage(String),
    /// 3: the store or the audit trail cannot be reached or failed.
    Unreachable(String),
    /// 4: the change was refused (live lease, wrong state, not confirmed).
    Refused(String),
}

impl Failure {
    pub(crate) fn code(&self) -> u8 {
        match self {
            Self::NothingMatched(_) => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Refused(_) => 4,
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    pub(crate) fn message(&self) -> String {
        let (what, detail) = match self {
            Self::NothingMatched(m) => ("nothing matched", m),
            Self::Usage(m) => ("usage", m),
            Self::Unreachable(m) => ("store unreachable or failing", m),
            Self::Refused(m) => ("refused", m),
        };
        format!("idempotency-admin: {what}: {detail}")
    }

    /// A store error while doing `what`.
    pub(crate) fn store(what: &str, e: &StoreError) -> Self {
        let detail = format!("{what}: {}", chain(e));
        match e {
            StoreError::NotFound => Self::NothingMatched(detail),
            StoreError::InvalidState { .. } | StoreError::Conflict | StoreError::LeaseLost => {
                Self::Refused(detail)
            }
            _ => Self::Unreachable(detail),
        }
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_exit_codes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let down = Failure::store("reading", &StoreError::unavailable(io));
        assert_eq!(down.code(), 3);
        assert!(down.message().contains("store unavailable: refused"));
        assert_eq!(Failure::store("x", &StoreError::NotFound).code(), 1);
        let state = StoreError::InvalidState {
            operation: "resolve",
            state: "COMPLETED",
        };
        assert_eq!(Failure::store("x", &state).code(), 4);
        assert_eq!(Failure::store("x", &StoreError::Conflict).code(), 4);
        assert_eq!(
            Failure::store("x", &StoreError::Timeout { source: None }).code(),
            3
        );
    }
}
