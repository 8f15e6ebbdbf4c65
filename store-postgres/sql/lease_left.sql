-- Milliseconds left on a live lease, or no row.
-- $1 key, $2 clock offset (ms).
SELECT {schema}.epoch_ms(r.lease_deadline) - {schema}.epoch_ms(c.now) AS left_ms
FROM {schema}.records r,
     (SELECT statement_timestamp() + $2::float8 * interval '1 millisecond' AS now) c
WHERE r.key = $1 AND r.state = 'PENDING' AND r.lease_deadline > c.now
