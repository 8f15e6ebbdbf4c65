-- Tells every process when a completed record stops counting before its
-- expiry, so in-process replay caches (`idempotency_core::cache`) drop it:
-- marked corrupted, re-claimed, or deleted by an operator. The reaper's
-- deletions of expired records are not announced (a cache stops serving an
-- entry before its expiry by itself). Same channel and payload as the
-- waiters' notifications: the key in hex.
--
-- `{schema}` is replaced before this file runs.

CREATE TRIGGER records_completed_changed
    AFTER UPDATE ON {schema}.records
    FOR EACH ROW
    WHEN (OLD.state = 'COMPLETED' AND (NEW.state <> 'COMPLETED' OR NEW.fence <> OLD.fence))
    EXECUTE FUNCTION {schema}.notify_change();

CREATE TRIGGER records_completed_deleted
    AFTER DELETE ON {schema}.records
    FOR EACH ROW
    WHEN (OLD.state = 'COMPLETED' AND OLD.expires_at > statement_timestamp())
    EXECUTE FUNCTION {schema}.notify_change();
