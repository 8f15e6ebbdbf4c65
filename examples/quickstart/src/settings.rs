//! The settings, read from the arguments and the environment and checked
//! at start, before anything is bound or connected: a nonsense value is one
//! line naming the variable and what it accepts (exit status 2).

use example_support::settings;
use idempotency_audit::postgres::sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use crate::app::IdempotencySettings;

/// The default listen address.
pub(crate) const DEFAULT_BIND: &str = "127.0.0.1:3000";

/// Accepted `IDEMPOTENCY_LEASE_SECS`: a lease under a second expires
/// while a request runs (a takeover executes it again); over an hour, a
/// crashed request blocks its key for that long.
pub(crate) const LEASE_SECS: RangeInclusive<u64> = 1..=3_600;
/// Accepted `IDEMPOTENCY_RETENTION_SECS`: up to a year.
pub(crate) const RETENTION_SECS: RangeInclusive<u64> = 1..=31_536_000;
/// Accepted `IDEMPOTENCY_WAIT_SECS`: a duplicate holds its connection at
/// most five minutes.
pub(crate) const WAIT_SECS: RangeInclusive<u64> = 1..=300;

/// Which idempotency store `IDEMPOTENCY_STORE` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// In this process (the default).
    Memory,
    /// PostgreSQL at `DATABASE_URL`.
    Postgres,
    /// Redis at `REDIS_URL`.
    Redis,
}

impl StoreKind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
        }
    }
}

/// Every setting of the service, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `--bind ADDR` / `BIND_ADDR`.
    pub(crate) bind: SocketAddr,
    /// `IDEMPOTENCY_STORE`.
    pub(crate) store: StoreKind,
    /// `DATABASE_URL`: the PostgreSQL audit trail (and store).
    pub(crate) database_url: Option<String>,
    /// `REDIS_URL`.
    pub(crate) redis_url: String,
    /// `IDEMPOTENCY_LEASE_SECS`, `IDEMPOTENCY_RETENTION_SECS`, `IDEMPOTENCY_WAIT_SECS`.
    pub(crate) idempotency: IdempotencySettings,
}

impl Settings {
    /// Reads and checks every setting; `var` reads the environment.
    ///
    /// # Errors
    ///
    /// One line naming the first bad setting and what it accepts.
    pub(crate) fn from_env(
        args: &[String],
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let bind = settings::bind_addr(args, var("BIND_ADDR"), DEFAULT_BIND)?;
        let store = match var("IDEMPOTENCY_STORE")
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "memory") => StoreKind::Memory,
            Some("postgres") => StoreKind::Postgres,
            Some("redis") => StoreKind::Redis,
            Some(_) => {
                return Err(format!(
                    "IDEMPOTENCY_STORE={:?} is not one of: memory, postgres, redis",
                    var("IDEMPOTENCY_STORE").unwrap_or_default()
                ));
            }
        };
        let database_url = var("DATABASE_URL").filter(|u| !u.is_empty());
        let postgres = |url: &str| {
            ["postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
                && url.parse::<PgConnectOptions>().is_ok()
        };
        if let Some(url) = &database_url
            && !postgres(url)
        {
            return Err(
                "DATABASE_URL is not a PostgreSQL URL such as postgres://user@127.0.0.1:5432/db"
                    .to_owned(),
            );
        }
        if store == StoreKind::Postgres && database_url.is_none() {
            return Err(
                "IDEMPOTENCY_STORE=postgres needs DATABASE_URL (postgres://user@host:5432/db)"
                    .to_owned(),
            );
        }
        let redis_url = var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        let redis_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| {
                redis_url
                    .strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty())
            });
        if !redis_ok {
            return Err(format!(
                "REDIS_URL={redis_url:?} is not a Redis URL such as redis://127.0.0.1:6379"
            ));
        }
        let idempotency = IdempotencySettings {
            lease: settings::secs(&var, "IDEMPOTENCY_LEASE_SECS", LEASE_SECS)?,
            retention: settings::secs(&var, "IDEMPOTENCY_RETENTION_SECS", RETENTION_SECS)?,
            wait: settings::secs(&var, "IDEMPOTENCY_WAIT_SECS", WAIT_SECS)?,
        };
        Ok(Self {
            bind,
            store,
            database_url,
            redis_url,
            idempotency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_env(&[], move |k: &str| {
            pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults() {
        let s = with(&[]).unwrap();
        assert_eq!(s.store, StoreKind::Memory);
        assert_eq!(s.idempotency, IdempotencySettings::default());
        assert!(s.database_url.is_none());
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
    }

    #[test]
    fn values_within_range_are_read() {
        let s = with(&[
            ("IDEMPOTENCY_LEASE_SECS", "5"),
            ("IDEMPOTENCY_RETENTION_SECS", "60"),
            ("IDEMPOTENCY_WAIT_SECS", "300"),
            ("IDEMPOTENCY_STORE", "Postgres"),
            ("DATABASE_URL", "postgres://u@127.0.0.1:5432/db"),
        ])
        .unwrap();
        assert_eq!(s.idempotency.lease, Some(Duration::from_secs(5)));
        assert_eq!(s.idempotency.retention, Some(Duration::from_secs(60)));
        assert_eq!(s.idempotency.wait, Some(Duration::from_secs(300)));
        assert_eq!(s.store, StoreKind::Postgres);
    }

    #[test]
    fn nonsense_is_one_line_naming_the_variable() {
        for (name, value) in [
            ("IDEMPOTENCY_LEASE_SECS", "0"),
            ("IDEMPOTENCY_LEASE_SECS", "3601"),
            ("IDEMPOTENCY_LEASE_SECS", "abc"),
            ("IDEMPOTENCY_LEASE_SECS", "-1"),
            ("IDEMPOTENCY_RETENTION_SECS", "0"),
            ("IDEMPOTENCY_WAIT_SECS", "18446744073709551615"),
            ("IDEMPOTENCY_WAIT_SECS", "0"),
            ("IDEMPOTENCY_STORE", "mongo"),
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "127.0.0.1:6379"),
            ("BIND_ADDR", "nope"),
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{name}={value}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let err = with(&[("IDEMPOTENCY_LEASE_SECS", "0")]).unwrap_err();
        assert!(err.contains("from 1 to 3600"), "{err}");
        let err = with(&[("IDEMPOTENCY_STORE", "postgres")]).unwrap_err();
        assert!(err.contains("needs DATABASE_URL"), "{err}");
    }
}
