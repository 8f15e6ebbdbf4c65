//! The core store conformance suite and the model-based lifecycle test, on
//! PostgreSQL (each case in a schema of its own): every claim reading the
//! record first (`peek.sql`), in `claim_only` none, in
//! `asynchronous_claims` none with `ClaimCommit::Asynchronous`, and in
//! `general_statement_only` none and without `claim_fast.sql`, so every
//! decision, a new key's included, is `claim.sql`'s.

mod common;

use idempotency_core::peek::ReadFirst;

async fn store(read_first: ReadFirst) -> Option<idempotency_postgres::PostgresStore> {
    let pool = common::pool().await?;
    Some(common::store_reading(pool, &common::fresh_schema(), read_first).await)
}

idempotency_core::store_conformance_tests!(store(ReadFirst::Always));
idempotency_core::store_model_test!(store(ReadFirst::Always));

mod claim_only {
    use super::{ReadFirst, store};

    idempotency_core::store_conformance_tests!(store(ReadFirst::Never));
    idempotency_core::store_model_test!(store(ReadFirst::Never));
}

/// Every claim through the claim statement, committed asynchronously
/// (`ClaimCommit::Asynchronous`): the same decisions.
mod asynchronous_claims {
    use idempotency_core::peek::ReadFirst;
    use idempotency_postgres::{ClaimCommit, PostgresStore};

    async fn store() -> Option<PostgresStore> {
        super::common::store_built(|b| {
            b.read_first(ReadFirst::Never)
                .claim_commit(ClaimCommit::Asynchronous)
        })
        .await
    }

    idempotency_core::store_conformance_tests!(store());
    idempotency_core::store_model_test!(store());
}

/// Every claim through `claim.sql` alone (no peek, no `claim_fast.sql`):
/// the general statement's own new-record branch, which the fast statement
/// otherwise takes over, decides the same.
mod general_statement_only {
    use idempotency_core::peek::ReadFirst;
    use idempotency_postgres::PostgresStore;

    async fn store() -> Option<PostgresStore> {
        super::common::store_built(|b| b.read_first(ReadFirst::Never).fast_claim(false)).await
    }

    idempotency_core::store_conformance_tests!(store());
    idempotency_core::store_model_test!(store());
}
