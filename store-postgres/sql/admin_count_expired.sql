-- How many records a purge would delete now (walks the reaper's index).
-- $1 clock offset (ms).
SELECT count(*)
FROM {schema}.records r,
     (SELECT statement_timestamp() + $1::float8 * interval '1 millisecond' AS now) c
WHERE r.expires_at <= c.now
  AND {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
