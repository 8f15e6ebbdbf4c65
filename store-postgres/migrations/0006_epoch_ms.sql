-- `epoch_ms` without numeric arithmetic.
--
-- Since PostgreSQL 14 `extract(epoch FROM ...)` returns `numeric`, and the
-- numeric multiply and floor made every statement that returns a time (all
-- of them) several times dearer than the row lookup itself: the replay read
-- (`peek.sql`) ran at 9,000–10,000 statements/s against 25,000 for a plain
-- indexed read of the same row (pgbench, 16 clients, BENCHMARKS.md). The
-- same value, exactly (checked against the old definition on 200,000 random
-- instants from 1969 to 2069 and the edges), from float8 arithmetic on a
-- time already truncated to the millisecond: the float8 seconds of an exact
-- millisecond are within 1e-6 ms of it, and round() returns it. Through
-- `AT TIME ZONE 'UTC'`, every function used is immutable, so the planner
-- still inlines it.
--
-- `{schema}` is replaced by the store's schema name before this file runs.

CREATE OR REPLACE FUNCTION {schema}.epoch_ms(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN isfinite(t)
                THEN round(date_part('epoch', date_trunc('milliseconds', t AT TIME ZONE 'UTC')) * 1000)::bigint
           END
$$;
