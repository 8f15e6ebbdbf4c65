-- Audit trail: append-only events, one SHA-256 hash chain per stream.
-- {{schema}} is replaced by the (validated) schema name before this runs.

-- One row per stream: the last sequence number and hash. Written only by
-- the chain trigger below; its lock serialises appends to one stream.
CREATE TABLE {{schema}}.streams (
    stream    text   PRIMARY KEY,
    last_seq  bigint NOT NULL CHECK (last_seq >= 0),
    last_hash bytea  NOT NULL CHECK (octet_length(last_hash) = 32)
);

CREATE TABLE {{schema}}.events (
    stream         text        NOT NULL,
    seq            bigint      NOT NULL,
    id             uuid        NOT NULL,
    type           text        NOT NULL,
    source         text        NOT NULL,
    subject        text,
    time           timestamptz NOT NULL,
    actor_id       text,
    actor_tenant   text,
    outcome        text,
    correlation_id text,
    key_hash       text,
    -- The event's canonical JSON, kept verbatim (json, not jsonb): the hashed bytes.
    content        json        NOT NULL,
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL,
    PRIMARY KEY (stream, seq),
    CONSTRAINT events_id_key UNIQUE (id)
);

CREATE INDEX events_type_time_idx ON {{schema}}.events (type, time);
CREATE INDEX events_subject_idx ON {{schema}}.events (subject) WHERE subject IS NOT NULL;
CREATE INDEX events_correlation_idx ON {{schema}}.events (correlation_id) WHERE correlation_id IS NOT NULL;

-- Assigns seq, prev_hash and hash to every new event, whatever the
-- inserting role supplied:
--   hash = sha256(prev_hash || be64(seq) || be64(len(stream)) || stream || content)
-- SECURITY DEFINER so that an insert-only role can advance the stream head
-- without any privilege on the streams table.
CREATE FUNCTION {{schema}}.chain_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    head_seq     bigint;
    head_hash    bytea;
    stream_bytes bytea := convert_to(NEW.stream, 'UTF8');
BEGIN
    SELECT last_seq, last_hash INTO head_seq, head_hash
      FROM {{schema}}.streams WHERE stream = NEW.stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO {{schema}}.streams (stream, last_seq, last_hash)
        VALUES (NEW.stream, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (stream) DO NOTHING;
        SELECT last_seq, last_hash INTO head_seq, head_hash
          FROM {{schema}}.streams WHERE stream = NEW.stream FOR UPDATE;
        IF NOT FOUND THEN
            -- Only under REPEATABLE READ / SERIALIZABLE: the head was created
            -- by a transaction this snapshot cannot see.
            RAISE EXCEPTION 'audit stream % was created concurrently; retry the transaction', NEW.stream
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    NEW.seq := head_seq + 1;
    NEW.prev_hash := head_hash;
    NEW.hash := sha256(
        head_hash
        || int8send(NEW.seq)
        || int8send(octet_length(stream_bytes)::bigint)
        || stream_bytes
        || convert_to(NEW.content::text, 'UTF8'));
    UPDATE {{schema}}.streams SET last_seq = NEW.seq, last_hash = NEW.hash
     WHERE stream = NEW.stream;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER events_chain BEFORE INSERT ON {{schema}}.events
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.chain_event();

-- Refuses the statement. SQLSTATE AUD01 marks an append-only violation.
CREATE FUNCTION {{schema}}.refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RAISE EXCEPTION 'audit table %.% is append-only: % is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'AUD01';
END
$fn$;

-- Statement level: refused even when no row matches.
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {{schema}}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.refuse_change();

CREATE TRIGGER streams_no_delete BEFORE DELETE OR TRUNCATE ON {{schema}}.streams
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.refuse_change();

-- A stream head starts empty and moves forward one event at a time.
CREATE FUNCTION {{schema}}.guard_stream_head() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.last_seq <> 0 OR NEW.last_hash <> decode(repeat('00', 32), 'hex') THEN
            RAISE EXCEPTION 'audit stream head % must start empty', NEW.stream USING ERRCODE = 'AUD01';
        END IF;
    ELSIF NEW.stream <> OLD.stream OR NEW.last_seq <> OLD.last_seq + 1 THEN
        RAISE EXCEPTION 'audit stream head % may only advance by one event', OLD.stream USING ERRCODE = 'AUD01';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER streams_guard BEFORE INSERT OR UPDATE ON {{schema}}.streams
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.guard_stream_head();

REVOKE ALL ON {{schema}}.events, {{schema}}.streams FROM PUBLIC;
