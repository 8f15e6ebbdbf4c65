-- Idempotency records. One row per storage key (SHA-256, never the raw client key).
--
-- `{schema}` is replaced by the store's schema name (a validated identifier)
-- before this file runs; `{channel}` by its notification channel.

CREATE TABLE {schema}.records (
    key            bytea       PRIMARY KEY CHECK (octet_length(key) = 32),
    fingerprint    bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    state          text        NOT NULL
                               CHECK (state IN ('PENDING', 'COMPLETED', 'FAILED', 'CORRUPTED')),
    -- Highest fencing number issued; strictly increases with every claim.
    fence          bigint      NOT NULL CHECK (fence >= 1),
    -- Claims that started an execution.
    attempts       integer     NOT NULL CHECK (attempts >= 1),
    -- How the latest lease was obtained.
    claim_kind     text        NOT NULL CHECK (claim_kind IN ('NEW', 'TAKEOVER', 'RETRY')),
    -- PENDING: the current claim's token and lease deadline.
    token          uuid,
    lease_deadline timestamptz,
    -- COMPLETED: the encoded outcome (`Outcome::encode`) and resource reference.
    -- CORRUPTED records keep whatever bytes were there, for inspection.
    outcome        bytea,
    resource       text,
    -- FAILED: the failure reason; CORRUPTED: what was found.
    reason         text,
    retryable      boolean,
    created_at     timestamptz NOT NULL,
    -- When the record completed, failed or was found corrupted.
    finished_at    timestamptz,
    -- When the record stops counting ('infinity' for CORRUPTED records).
    expires_at     timestamptz NOT NULL,
    CONSTRAINT records_pending_lease
        CHECK ((state = 'PENDING') = (token IS NOT NULL AND lease_deadline IS NOT NULL)),
    CONSTRAINT records_completed_outcome
        CHECK (state <> 'COMPLETED' OR (outcome IS NOT NULL AND finished_at IS NOT NULL)),
    CONSTRAINT records_failed_reason
        CHECK (state <> 'FAILED' OR (reason IS NOT NULL AND retryable IS NOT NULL AND finished_at IS NOT NULL)),
    CONSTRAINT records_corrupted_detail
        CHECK (state <> 'CORRUPTED' OR (reason IS NOT NULL AND finished_at IS NOT NULL))
);

-- The reaper walks this index.
CREATE INDEX records_expires_at_idx ON {schema}.records (expires_at);

-- Whether a record no longer counts at `now` (mirrors `Record::is_expired`):
-- a finished record past its retention, or an abandoned pending record whose
-- lease and retention have both run out. Corrupted records never expire.
CREATE FUNCTION {schema}.is_expired(
    state text, expires_at timestamptz, lease_deadline timestamptz, now timestamptz
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT state <> 'CORRUPTED'
       AND expires_at <= now
       AND (state <> 'PENDING' OR lease_deadline <= now)
$$;

-- Milliseconds since the Unix epoch, NULL for +/-infinity.
CREATE FUNCTION {schema}.epoch_ms(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN isfinite(t) THEN floor(extract(epoch FROM t) * 1000)::bigint END
$$;

-- Wakes waiters in every process when a record leaves PENDING (completed,
-- failed, corrupted, released, resolved or reaped). NOTIFY is delivered at
-- commit, so a completion written inside a caller's transaction wakes
-- waiters only once it is committed.
CREATE FUNCTION {schema}.notify_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('{channel}', encode(OLD.key, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER records_left_pending
    AFTER UPDATE ON {schema}.records
    FOR EACH ROW
    WHEN (OLD.state = 'PENDING' AND NEW.state <> 'PENDING')
    EXECUTE FUNCTION {schema}.notify_change();

CREATE TRIGGER records_pending_deleted
    AFTER DELETE ON {schema}.records
    FOR EACH ROW
    WHEN (OLD.state = 'PENDING')
    EXECUTE FUNCTION {schema}.notify_change();
