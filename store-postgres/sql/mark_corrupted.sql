-- The observed live record -> CORRUPTED (never expires; blocks claims until
-- resolved). Compare-and-set: written only if the record is live and still
-- in the observed state at the observed fence (checked again under the row
-- lock). The stored outcome bytes are kept for inspection.
-- $1 key, $2 detail, $3 observed state, $4 observed fence, $5 clock offset (ms).
-- One row: whether it was marked, and whether a live record was there at
-- all (in the statement's snapshot): neither is "not found", found alone
-- is "changed since it was observed".
WITH clock AS (
    SELECT statement_timestamp() + $5::float8 * interval '1 millisecond' AS now
),
marked AS (
    UPDATE {schema}.records r
    SET state = 'CORRUPTED',
        token = NULL,
        lease_deadline = NULL,
        reason = $2,
        retryable = NULL,
        finished_at = c.now,
        expires_at = 'infinity'
    FROM clock c
    WHERE r.key = $1 AND r.state = $3 AND r.fence = $4
      AND NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM marked) AS marked,
       EXISTS (SELECT 1
               FROM {schema}.records r, clock c
               WHERE r.key = $1
                 AND NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)) AS found
