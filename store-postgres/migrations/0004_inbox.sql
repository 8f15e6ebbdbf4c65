-- The inbox: which messages each consumer processed, and for ordered
-- messages the last version of each aggregate it applied.
--
-- `{schema}` is replaced by the store's schema name before this file runs.

CREATE TABLE {schema}.inbox_entries (
    consumer     text        NOT NULL CHECK (octet_length(consumer) BETWEEN 1 AND 255),
    message_id   text        NOT NULL CHECK (octet_length(message_id) BETWEEN 1 AND 255),
    disposition  text        NOT NULL CHECK (disposition IN ('APPLIED', 'STALE')),
    -- Ordered messages: the aggregate and the message's version in it.
    aggregate    text        CHECK (octet_length(aggregate) BETWEEN 1 AND 255),
    version      bigint      CHECK (version >= 1),
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id),
    CONSTRAINT inbox_entries_order CHECK ((aggregate IS NULL) = (version IS NULL))
);

-- Purging old entries walks this index.
CREATE INDEX inbox_entries_processed_at_idx ON {schema}.inbox_entries (processed_at);

CREATE TABLE {schema}.inbox_versions (
    consumer     text        NOT NULL CHECK (octet_length(consumer) BETWEEN 1 AND 255),
    aggregate    text        NOT NULL CHECK (octet_length(aggregate) BETWEEN 1 AND 255),
    -- 0 until the first version is applied.
    last_version bigint      NOT NULL CHECK (last_version >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, aggregate)
);

-- Decides one delivery inside the caller's transaction and writes what it
-- decided (see `Admission`): 'APPLY' (entry APPLIED, version advanced),
-- 'DUPLICATE' (nothing), 'STALE' (entry STALE), 'OUT_OF_ORDER' (nothing).
-- `last_applied` is the aggregate's last applied version before this call.
--
-- Locks: an ordered message locks its aggregate's row (the upsert), every
-- message its entry's key (the insert); both last until the transaction
-- ends, so a concurrent delivery of the same message or aggregate waits and
-- then decides on what was committed.
CREATE FUNCTION {schema}.inbox_admit(
    p_consumer text, p_message_id text, p_aggregate text, p_version bigint,
    OUT decision text, OUT last_applied bigint
)
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_aggregate IS NULL THEN
        INSERT INTO {schema}.inbox_entries (consumer, message_id, disposition)
        VALUES (p_consumer, p_message_id, 'APPLIED')
        ON CONFLICT DO NOTHING;
        decision := CASE WHEN FOUND THEN 'APPLY' ELSE 'DUPLICATE' END;
        RETURN;
    END IF;

    INSERT INTO {schema}.inbox_versions AS v (consumer, aggregate, last_version)
    VALUES (p_consumer, p_aggregate, 0)
    ON CONFLICT (consumer, aggregate) DO UPDATE SET last_version = v.last_version
    RETURNING v.last_version INTO last_applied;

    IF p_version > last_applied + 1 THEN
        PERFORM 1 FROM {schema}.inbox_entries
        WHERE consumer = p_consumer AND message_id = p_message_id;
        decision := CASE WHEN FOUND THEN 'DUPLICATE' ELSE 'OUT_OF_ORDER' END;
        RETURN;
    END IF;

    INSERT INTO {schema}.inbox_entries (consumer, message_id, disposition, aggregate, version)
    VALUES (p_consumer, p_message_id,
            CASE WHEN p_version <= last_applied THEN 'STALE' ELSE 'APPLIED' END,
            p_aggregate, p_version)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        decision := 'DUPLICATE';
    ELSIF p_version <= last_applied THEN
        decision := 'STALE';
    ELSE
        UPDATE {schema}.inbox_versions
        SET last_version = p_version, updated_at = now()
        WHERE consumer = p_consumer AND aggregate = p_aggregate;
        decision := 'APPLY';
    END IF;
END
$$;
