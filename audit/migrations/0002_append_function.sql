-- Audit trail v2: appends go through one function, a batch at a time, and
-- the application's role may call only that function.
-- {{schema}} is replaced by the (validated) schema name and {{writer}} by the
-- writer role before this runs; the roles exist by then (the migration
-- runner creates them, or refuses with the script to run).

-- Roles that were granted INSERT on the events table directly (the setup
-- this crate documented before) become members of the writer role instead:
-- they keep appending, now only through append_events.
DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text AS name
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = '{{schema}}.events'::regclass
           AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
           AND a.grantee <> c.relowner
           AND a.grantee <> 0
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {{schema}}.events FROM %s', r.name);
        EXECUTE format('GRANT {{writer}} TO %s', r.name);
    END LOOP;
END
$do$;

-- The per-row trigger that chained every insert (a head lock, a sha256 and a
-- head update per row) is replaced by append_events below, which locks the
-- head once per batch and inserts the batch in one statement.
DROP TRIGGER events_chain ON {{schema}}.events;
DROP FUNCTION {{schema}}.chain_event();

-- Rows enter only through append_events, which marks its own INSERT with a
-- transaction-local setting. Only the owner (and superusers) may INSERT at
-- all: this stops their mistakes, not them (they may set the mark, or switch
-- the triggers off); the writer role has no INSERT privilege to begin with.
CREATE FUNCTION {{schema}}.refuse_direct_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF current_setting('idempotency_audit.appending', true) IS DISTINCT FROM TG_TABLE_SCHEMA THEN
        RAISE EXCEPTION 'audit table %.% takes rows only through append_events', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'AUD01';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER events_insert_guard BEFORE INSERT ON {{schema}}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.refuse_direct_insert();

-- A stream head starts empty and only moves forward, to a stored row.
CREATE OR REPLACE FUNCTION {{schema}}.guard_stream_head() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.last_seq <> 0 OR NEW.last_hash <> decode(repeat('00', 32), 'hex') THEN
            RAISE EXCEPTION 'audit stream head % must start empty', NEW.stream USING ERRCODE = 'AUD01';
        END IF;
    ELSIF NEW.stream <> OLD.stream OR NEW.last_seq <= OLD.last_seq OR NOT EXISTS (
        SELECT 1 FROM {{schema}}.events
         WHERE stream = NEW.stream AND seq = NEW.last_seq AND hash = NEW.last_hash
    ) THEN
        RAISE EXCEPTION 'audit stream head % may only advance, to a stored event', OLD.stream USING ERRCODE = 'AUD01';
    END IF;
    RETURN NEW;
END
$fn$;

-- Appends a batch of events to one stream: locks the head once, chains the
-- rows
--   hash = sha256(prev_hash || be64(seq) || be64(len(stream)) || stream || content)
-- inserts them in one statement and moves the head to the last. Returns the
-- first seq and every hash.
-- The arrays are parallel, one element per event; times are microseconds
-- since the Unix epoch. SECURITY DEFINER: runs as the owner, so the writer
-- role needs no privilege on the tables, only EXECUTE on this function.
CREATE FUNCTION {{schema}}.append_events(
    p_stream          text,
    p_ids             uuid[],
    p_types           text[],
    p_sources         text[],
    p_subjects        text[],
    p_times           bigint[],
    p_actor_ids       text[],
    p_actor_tenants   text[],
    p_outcomes        text[],
    p_correlation_ids text[],
    p_key_hashes      text[],
    p_contents        text[],
    OUT first_seq     bigint,
    OUT hashes        bytea[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    n         int := coalesce(cardinality(p_contents), 0);
    head_seq  bigint;
    head_hash bytea;
    h         bytea;
    prefix bytea := int8send(octet_length(convert_to(p_stream, 'UTF8'))::bigint) || convert_to(p_stream, 'UTF8');
    prevs  bytea[] := '{}';
BEGIN
    IF n = 0 OR n > 100000
       OR cardinality(p_ids) IS DISTINCT FROM n OR cardinality(p_types) IS DISTINCT FROM n
       OR cardinality(p_sources) IS DISTINCT FROM n OR cardinality(p_subjects) IS DISTINCT FROM n
       OR cardinality(p_times) IS DISTINCT FROM n OR cardinality(p_actor_ids) IS DISTINCT FROM n
       OR cardinality(p_actor_tenants) IS DISTINCT FROM n OR cardinality(p_outcomes) IS DISTINCT FROM n
       OR cardinality(p_correlation_ids) IS DISTINCT FROM n OR cardinality(p_key_hashes) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'append_events: the arrays must have one element per event, 1 to 100000 of them'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT last_seq, last_hash INTO head_seq, head_hash
      FROM {{schema}}.streams WHERE stream = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO {{schema}}.streams (stream, last_seq, last_hash)
        VALUES (p_stream, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (stream) DO NOTHING;
        SELECT last_seq, last_hash INTO head_seq, head_hash
          FROM {{schema}}.streams WHERE stream = p_stream FOR UPDATE;
        IF NOT FOUND THEN
            -- Only under REPEATABLE READ / SERIALIZABLE: the head was created
            -- by a transaction this snapshot cannot see.
            RAISE EXCEPTION 'audit stream % was created concurrently; retry the transaction', p_stream
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    first_seq := head_seq + 1;
    h := head_hash;
    hashes := '{}';
    FOR i IN 1..n LOOP
        prevs := prevs || h;
        h := sha256(h || int8send(head_seq + i) || prefix || convert_to(p_contents[i], 'UTF8'));
        hashes := hashes || h;
    END LOOP;
    PERFORM set_config('idempotency_audit.appending', '{{schema_name}}', true);
    INSERT INTO {{schema}}.events
        (stream, seq, id, type, source, subject, time, actor_id, actor_tenant, outcome,
         correlation_id, key_hash, content, prev_hash, hash)
    SELECT p_stream, head_seq + u.o, u.id, u.type, u.source, u.subject,
           timestamptz 'epoch' + (u.t / 1000000) * interval '1 second'
                               + (u.t % 1000000) * interval '1 microsecond',
           u.actor_id, u.actor_tenant, u.outcome, u.correlation_id, u.key_hash,
           u.content::json, u.prev, u.hash
      FROM unnest(p_ids, p_types, p_sources, p_subjects, p_times, p_actor_ids, p_actor_tenants,
                  p_outcomes, p_correlation_ids, p_key_hashes, p_contents, prevs, hashes)
           WITH ORDINALITY AS u(id, type, source, subject, t, actor_id, actor_tenant, outcome,
                                correlation_id, key_hash, content, prev, hash, o);
    PERFORM set_config('idempotency_audit.appending', '', true);
    UPDATE {{schema}}.streams SET last_seq = head_seq + n, last_hash = h WHERE stream = p_stream;
END
$fn$;

-- One event: the same as append_events with arrays of one, without the
-- arrays (the single-event atomic append of a business transaction).
-- Returns the event's seq and hash.
CREATE FUNCTION {{schema}}.append_event(
    p_stream         text,
    p_id             uuid,
    p_type           text,
    p_source         text,
    p_subject        text,
    p_time           bigint,
    p_actor_id       text,
    p_actor_tenant   text,
    p_outcome        text,
    p_correlation_id text,
    p_key_hash       text,
    p_content        text,
    OUT seq          bigint,
    OUT hash         bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    head_seq     bigint;
    head_hash    bytea;
    stream_bytes bytea := convert_to(p_stream, 'UTF8');
BEGIN
    SELECT s.last_seq, s.last_hash INTO head_seq, head_hash
      FROM {{schema}}.streams s WHERE s.stream = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO {{schema}}.streams (stream, last_seq, last_hash)
        VALUES (p_stream, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (stream) DO NOTHING;
        SELECT s.last_seq, s.last_hash INTO head_seq, head_hash
          FROM {{schema}}.streams s WHERE s.stream = p_stream FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'audit stream % was created concurrently; retry the transaction', p_stream
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    seq := head_seq + 1;
    hash := sha256(head_hash || int8send(seq) || int8send(octet_length(stream_bytes)::bigint)
                   || stream_bytes || convert_to(p_content, 'UTF8'));
    PERFORM set_config('idempotency_audit.appending', '{{schema_name}}', true);
    INSERT INTO {{schema}}.events
        (stream, seq, id, type, source, subject, time, actor_id, actor_tenant, outcome,
         correlation_id, key_hash, content, prev_hash, hash)
    VALUES (p_stream, seq, p_id, p_type, p_source, p_subject,
            timestamptz 'epoch' + (p_time / 1000000) * interval '1 second'
                                + (p_time % 1000000) * interval '1 microsecond',
            p_actor_id, p_actor_tenant, p_outcome, p_correlation_id, p_key_hash,
            p_content::json, head_hash, hash);
    PERFORM set_config('idempotency_audit.appending', '', true);
    UPDATE {{schema}}.streams SET last_seq = seq, last_hash = hash WHERE stream = p_stream;
END
$fn$;
