//! The store's SQL, embedded from `sql/*.sql` and specialised to one schema
//! once, when the store is built.

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use crate::store::ClaimCommit;

/// What `{claim_commit}` in `claim.sql` becomes with
/// [`ClaimCommit::Asynchronous`]: a column of the statement's `clock` CTE
/// that turns off `synchronous_commit` for the statement's own transaction
/// (`set_config(..., true)` is local to the transaction, and a commit reads
/// the setting as it is at that moment). Volatile, so the planner never
/// prunes it; `clock` is read by every branch of the statement.
const ASYNC_CLAIM_COMMIT: &str =
    ",\n           set_config('synchronous_commit', 'off', true) AS claim_commit";

const CLAIM: &str = include_str!("../sql/claim.sql");
const CLAIM_FAST: &str = include_str!("../sql/claim_fast.sql");

/// One statement with the schema substituted.
#[derive(Clone)]
pub(crate) struct Stmt(Arc<str>);

impl Stmt {
    fn new(template: &str, schema: &str, channel: &str) -> Self {
        Self(substitute(template, schema, channel).into())
    }

    /// A claim statement (`claim.sql`, `claim_fast.sql`), committing as
    /// `commit` says.
    fn claim(template: &str, schema: &str, channel: &str, commit: ClaimCommit) -> Self {
        let column = match commit {
            ClaimCommit::Durable => "",
            ClaimCommit::Asynchronous => ASYNC_CLAIM_COMMIT,
        };
        Self::new(&template.replace("{claim_commit}", column), schema, channel)
    }

    /// The statement, ready for `sqlx::query`. Shares the text, no copy.
    pub(crate) fn sql(&self) -> AssertSqlSafe<Arc<str>> {
        // Safe: the only dynamic part is the schema name, validated as a plain
        // lowercase identifier when the store was built and quoted; values
        // are bound.
        AssertSqlSafe(Arc::clone(&self.0))
    }
}

/// Replaces `{schema}` (by the quoted identifier, so even a name that is a
/// keyword works) and `{channel}` in a template. `schema` is validated as
/// `[a-z_][a-z0-9_]*` before it gets here.
pub(crate) fn substitute(template: &str, schema: &str, channel: &str) -> String {
    template
        .replace("{schema}", &format!("\"{schema}\""))
        .replace("{channel}", channel)
}

macro_rules! statements {
    ($($name:ident => $file:literal,)*) => {
        /// Every statement the store runs.
        pub(crate) struct Queries {
            pub(crate) claim: Stmt,
            pub(crate) claim_fast: Stmt,
            $(pub(crate) $name: Stmt,)*
        }

        impl Queries {
            pub(crate) fn new(schema: &str, channel: &str, claim_commit: ClaimCommit) -> Self {
                Self {
                    claim: Stmt::claim(CLAIM, schema, channel, claim_commit),
                    claim_fast: Stmt::claim(CLAIM_FAST, schema, channel, claim_commit),
                    $($name: Stmt::new(include_str!(concat!("../sql/", $file)), schema, channel),)*
                }
            }
        }
    };
}

statements! {
    peek => "peek.sql",
    complete => "complete.sql",
    fail => "fail.sql",
    release => "release.sql",
    renew => "renew.sql",
    get => "get.sql",
    mark_corrupted => "mark_corrupted.sql",
    mark_undecodable => "mark_undecodable.sql",
    resolve_lock => "resolve_lock.sql",
    resolve_delete => "resolve_delete.sql",
    resolve_fail => "resolve_fail.sql",
    lease_left => "lease_left.sql",
    watch => "watch.sql",
    purge => "purge.sql",
    reaper_lock => "reaper_lock.sql",
    migrate_lock => "migrate_lock.sql",
    migrate_bootstrap => "migrate_bootstrap.sql",
    migrate_applied => "migrate_applied.sql",
    migrate_record => "migrate_record.sql",
    admin_inspect => "admin_inspect.sql",
    admin_list => "admin_list.sql",
    admin_count_expired => "admin_count_expired.sql",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_claims_commit_durably_unless_told_otherwise() {
        for template in [CLAIM, CLAIM_FAST] {
            let durable = Stmt::claim(template, "idempotency", "c", ClaimCommit::Durable);
            let deferred = Stmt::claim(template, "idempotency", "c", ClaimCommit::Asynchronous);
            assert!(!durable.0.contains("{claim_commit}"));
            assert!(!durable.0.contains(ASYNC_CLAIM_COMMIT));
            assert!(!deferred.0.contains("{claim_commit}"));
            assert_eq!(deferred.0.matches(ASYNC_CLAIM_COMMIT).count(), 1);
            assert!(
                deferred
                    .0
                    .contains("AS now,\n           set_config('synchronous_commit', 'off', true)")
            );
            // Nothing but the one column differs.
            assert_eq!(deferred.0.replace(ASYNC_CLAIM_COMMIT, ""), *durable.0);
        }
    }

    #[test]
    fn schema_is_quoted_and_channel_is_plain() {
        assert_eq!(
            substitute(
                "SELECT * FROM {schema}.records; NOTIFY '{channel}'",
                "select",
                "select_changes"
            ),
            "SELECT * FROM \"select\".records; NOTIFY 'select_changes'"
        );
    }
}
