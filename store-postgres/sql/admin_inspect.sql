-- An operator's read of a record, expired or not; never locks, never writes.
-- $1 key, $2 clock offset (ms).
SELECT r.state, r.fingerprint, r.fence, r.attempts, r.claim_kind, r.token,
       {schema}.epoch_ms(r.lease_deadline) AS lease_deadline_ms,
       r.outcome, r.resource, r.reason, r.retryable,
       {schema}.epoch_ms(r.created_at) AS created_ms,
       {schema}.epoch_ms(r.finished_at) AS finished_ms,
       {schema}.epoch_ms(r.expires_at) AS expires_ms,
       {schema}.epoch_ms(c.now) AS now_ms
FROM {schema}.records r,
     (SELECT statement_timestamp() + $2::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1
