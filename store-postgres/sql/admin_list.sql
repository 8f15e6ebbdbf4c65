-- Live records for an operator, most urgent first: corrupted, pending with a
-- lapsed lease (stuck), pending, failed, completed; oldest first within each,
-- then by key. `matched` is how many records passed the filter in all.
--
-- No index serves the filter (an index on the state would cost every claim
-- and completion one more index write): the table is read once and the
-- `limit` most urgent keys are kept (a top-N sort); only their rows are
-- then read whole.
-- $1 state (NULL: any), $2 minimum age in ms (NULL: any), $3 limit,
-- $4 clock offset (ms).
WITH c AS (
    SELECT statement_timestamp() + $4::float8 * interval '1 millisecond' AS now
),
matched AS (
    SELECT r.key, r.created_at,
           CASE
               WHEN r.state = 'CORRUPTED' THEN 0
               WHEN r.state = 'PENDING' AND r.lease_deadline <= c.now THEN 1
               WHEN r.state = 'PENDING' THEN 2
               WHEN r.state = 'FAILED' THEN 3
               ELSE 4
           END AS urgency,
           count(*) OVER () AS matched
    FROM {schema}.records r, c
    WHERE NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
      AND ($1::text IS NULL OR r.state = $1::text)
      AND ($2::float8 IS NULL OR r.created_at <= c.now - $2::float8 * interval '1 millisecond')
    ORDER BY urgency, r.created_at, r.key
    LIMIT $3
)
SELECT r.key, r.state, r.fingerprint, r.fence, r.attempts, r.claim_kind, r.token,
       {schema}.epoch_ms(r.lease_deadline) AS lease_deadline_ms,
       r.outcome, r.resource, r.reason, r.retryable,
       {schema}.epoch_ms(r.created_at) AS created_ms,
       {schema}.epoch_ms(r.finished_at) AS finished_ms,
       {schema}.epoch_ms(r.expires_at) AS expires_ms,
       {schema}.epoch_ms(c.now) AS now_ms,
       m.matched
FROM matched m
JOIN {schema}.records r ON r.key = m.key, c
ORDER BY m.urgency, m.created_at, m.key
