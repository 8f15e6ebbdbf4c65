-- Waiters are woken only for records somebody waits on.
--
-- A NOTIFY in a committing transaction takes a global lock at commit, so a
-- trigger that notifies on every completion serialises the commits of every
-- completion of every key (measured: an UPDATE + pg_notify per transaction
-- runs at less than half the rate of the UPDATE alone). Instead, the first
-- waiter of a process marks the record `watched` (`{schema}.watch`), and the
-- triggers notify only for a watched record.
--
-- The mark and the completion meet on the record's row lock, so a waiter is
-- never missed: a mark written before the completion is seen by the
-- completion's trigger (its OLD row is the latest committed version); a
-- mark attempted while a completion holds the row waits for its commit and
-- then finds the record no longer PENDING, and its waiter returns at once.
--
-- `{schema}` and `{channel}` are replaced before this file runs.

ALTER TABLE {schema}.records ADD COLUMN watched boolean NOT NULL DEFAULT false;

-- Marks a live PENDING record watched and returns the milliseconds left on
-- its lease; NULL when the record is not a live PENDING one (no waiting).
-- $1 key, $2 clock offset (ms).
--
-- The mark is advisory: a commit of it lost in a crash costs a waiter its
-- bounded wait, nothing else, so it does not wait for the WAL flush.
CREATE FUNCTION {schema}.watch(k bytea, offset_ms float8) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    now timestamptz := statement_timestamp() + offset_ms * interval '1 millisecond';
    left_ms bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE {schema}.records r SET watched = true
     WHERE r.key = k AND r.state = 'PENDING' AND r.lease_deadline > now AND NOT r.watched
    RETURNING {schema}.epoch_ms(r.lease_deadline) - {schema}.epoch_ms(now) INTO left_ms;
    IF NOT FOUND THEN
        -- Already watched (or not a live PENDING record): read it.
        SELECT {schema}.epoch_ms(r.lease_deadline) - {schema}.epoch_ms(now) INTO left_ms
          FROM {schema}.records r
         WHERE r.key = k AND r.state = 'PENDING' AND r.lease_deadline > now;
    END IF;
    RETURN left_ms;
END
$$;

DROP TRIGGER records_left_pending ON {schema}.records;
DROP TRIGGER records_pending_deleted ON {schema}.records;

CREATE TRIGGER records_left_pending
    AFTER UPDATE ON {schema}.records
    FOR EACH ROW
    WHEN (OLD.state = 'PENDING' AND NEW.state <> 'PENDING' AND OLD.watched)
    EXECUTE FUNCTION {schema}.notify_change();

CREATE TRIGGER records_pending_deleted
    AFTER DELETE ON {schema}.records
    FOR EACH ROW
    WHEN (OLD.state = 'PENDING' AND OLD.watched)
    EXECUTE FUNCTION {schema}.notify_change();
