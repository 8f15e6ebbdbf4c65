-- Deletes up to $1 expired records, oldest expiry first. Rows locked by a
-- concurrent claim or another reaper are skipped, never waited for.
-- $1 batch size, $2 clock offset (ms).
WITH clock AS (
    SELECT statement_timestamp() + $2::float8 * interval '1 millisecond' AS now
),
victims AS (
    SELECT r.key
    FROM {schema}.records r, clock c
    WHERE r.expires_at <= c.now
      AND {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
    ORDER BY r.expires_at
    LIMIT $1
    FOR UPDATE OF r SKIP LOCKED
)
DELETE FROM {schema}.records r
USING victims v
WHERE r.key = v.key
