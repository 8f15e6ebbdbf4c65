-- The claim's read-only answer, alone: the record when a claim would
-- return it untouched (completed, failed for good, corrupted, in flight, or
-- another request's), no row when a claim may write (absent, expired, an
-- abandoned lease, a retryable failure).
--
-- $1 key, $2 fingerprint, $3 max attempts, $4 clock offset (ms).
--
-- A replay or an in-flight answer costs this one indexed read instead of
-- the claim statement (whose data-modifying CTE costs several times more);
-- no row sends the caller on to `claim.sql`, which decides again under its
-- own snapshot. The condition is `cur.takeable` of `claim.sql`, negated.
WITH clock AS (
    SELECT statement_timestamp() + $4::float8 * interval '1 millisecond' AS now
)
SELECT false AS written, r.state, r.fingerprint, r.fence, r.attempts, r.claim_kind, r.token,
       {schema}.epoch_ms(r.lease_deadline) AS lease_deadline_ms,
       r.outcome, r.resource, r.reason, r.retryable,
       {schema}.epoch_ms(r.finished_at) AS finished_ms,
       {schema}.epoch_ms(c.now) AS now_ms
FROM {schema}.records r, clock c
WHERE r.key = $1
  AND NOT ({schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
           OR (r.fingerprint = $2
               AND ((r.state = 'PENDING' AND r.lease_deadline <= c.now)
                    OR (r.state = 'FAILED' AND r.retryable AND r.attempts < $3))))
