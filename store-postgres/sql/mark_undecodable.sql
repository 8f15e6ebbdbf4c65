-- The version of the record that was just read cannot be decoded -> CORRUPTED.
-- Guarded by state, fence and the exact stored bytes, so a record rewritten
-- in the meantime is left alone.
-- $1 key, $2 detail, $3 state read, $4 fence read, $5 outcome read, $6 clock offset (ms).
UPDATE {schema}.records r
SET state = 'CORRUPTED',
    token = NULL,
    lease_deadline = NULL,
    reason = $2,
    retryable = NULL,
    finished_at = c.now,
    expires_at = 'infinity'
FROM (SELECT statement_timestamp() + $6::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1 AND r.state = $3 AND r.fence = $4 AND r.outcome IS NOT DISTINCT FROM $5
