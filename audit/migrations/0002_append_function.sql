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
-- head once per batch, and by one statement-level linkage check.
DROP TRIGGER events_chain ON {{schema}}.events;
DROP FUNCTION {{schema}}.chain_event();

-- Locks a stream's head row, creating it (empty) on the first event.
CREATE FUNCTION {{schema}}.lock_head(p_stream text, OUT head_seq bigint, OUT head_hash bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
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
END
$fn$;

-- Every INSERT into events, whoever makes it, must continue its streams:
-- per stream, contiguous seq from head + 1, each prev_hash the previous
-- row's hash (the head's for the first). The head then moves to the last
-- row. The row hashes themselves are recomputed by the verifier.
CREATE FUNCTION {{schema}}.link_events() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r         record;
    head      record;
    bad       bigint;
    new_head  bytea;
BEGIN
    FOR r IN
        SELECT stream, min(seq) AS first_seq, max(seq) AS last_seq, count(*) AS n
          FROM new_rows GROUP BY stream ORDER BY stream
    LOOP
        SELECT * INTO head FROM {{schema}}.lock_head(r.stream);
        IF r.first_seq IS DISTINCT FROM head.head_seq + 1 OR r.last_seq - r.first_seq + 1 <> r.n THEN
            RAISE EXCEPTION 'audit stream %: new events must take seq % onwards without gaps', r.stream, head.head_seq + 1
                USING ERRCODE = 'AUD01';
        END IF;
        SELECT l.seq INTO bad FROM (
            SELECT seq, prev_hash, lag(hash, 1, head.head_hash) OVER (ORDER BY seq) AS expected
              FROM new_rows WHERE stream = r.stream
        ) l WHERE l.prev_hash IS DISTINCT FROM l.expected ORDER BY l.seq LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'audit stream % seq %: prev_hash is not the previous event''s hash', r.stream, bad
                USING ERRCODE = 'AUD01';
        END IF;
        SELECT hash INTO new_head FROM new_rows WHERE stream = r.stream AND seq = r.last_seq;
        UPDATE {{schema}}.streams SET last_seq = r.last_seq, last_hash = new_head
         WHERE stream = r.stream;
    END LOOP;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER events_link AFTER INSERT ON {{schema}}.events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.link_events();

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
-- and inserts them in one statement. Returns the first seq and every hash.
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
    n      int := coalesce(cardinality(p_contents), 0);
    head   record;
    h      bytea;
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
    SELECT * INTO head FROM {{schema}}.lock_head(p_stream);
    first_seq := head.head_seq + 1;
    h := head.head_hash;
    hashes := '{}';
    FOR i IN 1..n LOOP
        prevs := prevs || h;
        h := sha256(h || int8send(head.head_seq + i) || prefix || convert_to(p_contents[i], 'UTF8'));
        hashes := hashes || h;
    END LOOP;
    INSERT INTO {{schema}}.events
        (stream, seq, id, type, source, subject, time, actor_id, actor_tenant, outcome,
         correlation_id, key_hash, content, prev_hash, hash)
    SELECT p_stream, head.head_seq + u.o, u.id, u.type, u.source, u.subject,
           timestamptz 'epoch' + (u.t / 1000000) * interval '1 second'
                               + (u.t % 1000000) * interval '1 microsecond',
           u.actor_id, u.actor_tenant, u.outcome, u.correlation_id, u.key_hash,
           u.content::json, u.prev, u.hash
      FROM unnest(p_ids, p_types, p_sources, p_subjects, p_times, p_actor_ids, p_actor_tenants,
                  p_outcomes, p_correlation_ids, p_key_hashes, p_contents, prevs, hashes)
           WITH ORDINALITY AS u(id, type, source, subject, t, actor_id, actor_tenant, outcome,
                                correlation_id, key_hash, content, prev, hash, o);
END
$fn$;
