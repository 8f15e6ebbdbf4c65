-- One reaper per schema at a time: taken for the reaper's transaction, never waited for.
-- $1 lock name ("reaper:<schema>").
SELECT pg_try_advisory_xact_lock(hashtext('idempotency-postgres'), hashtext($1))
