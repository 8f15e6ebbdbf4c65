-- PENDING (this lease, not expired) -> absent.
-- $1 key, $2 token, $3 fence, $4 clock offset (ms).
DELETE FROM {schema}.records r
USING (SELECT statement_timestamp() + $4::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1 AND r.state = 'PENDING' AND r.token = $2 AND r.fence = $3
  AND NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
