-- PENDING (this lease, not expired) -> FAILED; retention restarts now.
-- $1 key, $2 token, $3 fence, $4 reason, $5 retryable, $6 retention (ms),
-- $7 clock offset (ms).
UPDATE {schema}.records r
SET state = 'FAILED',
    token = NULL,
    lease_deadline = NULL,
    outcome = NULL,
    resource = NULL,
    reason = $4,
    retryable = $5,
    finished_at = c.now,
    expires_at = c.now + $6::float8 * interval '1 millisecond'
FROM (SELECT statement_timestamp() + $7::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1 AND r.state = 'PENDING' AND r.token = $2 AND r.fence = $3
  AND NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
