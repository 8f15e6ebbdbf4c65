-- Operator resolution: turn the record into a failure, kept for a day.
-- $1 key, $2 reason, $3 retryable, $4 clock offset (ms).
UPDATE {schema}.records r
SET state = 'FAILED',
    token = NULL,
    lease_deadline = NULL,
    outcome = NULL,
    resource = NULL,
    reason = $2,
    retryable = $3,
    finished_at = c.now,
    expires_at = c.now + interval '1 day'
FROM (SELECT statement_timestamp() + $4::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1
