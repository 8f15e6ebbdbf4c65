-- Serialises migrations of one schema across processes, for the migration's transaction.
-- $1 lock name ("migrate:<schema>").
SELECT pg_advisory_xact_lock(hashtext('idempotency-postgres'), hashtext($1))
