-- Marks a live PENDING record watched (see migration 0003) and returns the
-- milliseconds left on its lease, or NULL.
-- $1 key, $2 clock offset (ms).
SELECT {schema}.watch($1, $2::float8) AS left_ms
