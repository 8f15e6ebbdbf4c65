-- Any live record -> CORRUPTED (never expires; blocks claims until resolved).
-- The stored outcome bytes are kept for inspection.
-- $1 key, $2 detail, $3 clock offset (ms).
UPDATE {schema}.records r
SET state = 'CORRUPTED',
    token = NULL,
    lease_deadline = NULL,
    reason = $2,
    retryable = NULL,
    finished_at = c.now,
    expires_at = 'infinity'
FROM (SELECT statement_timestamp() + $3::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1 AND NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
