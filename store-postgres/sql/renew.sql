-- PENDING (this lease, not expired): deadline = now + lease, expiry never earlier than the deadline.
-- $1 key, $2 token, $3 fence, $4 lease (ms), $5 clock offset (ms).
UPDATE {schema}.records r
SET lease_deadline = c.now + $4::float8 * interval '1 millisecond',
    expires_at = greatest(r.expires_at, c.now + $4::float8 * interval '1 millisecond')
FROM (SELECT statement_timestamp() + $5::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1 AND r.state = 'PENDING' AND r.token = $2 AND r.fence = $3
  AND NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
RETURNING {schema}.epoch_ms(r.lease_deadline) AS lease_deadline_ms
