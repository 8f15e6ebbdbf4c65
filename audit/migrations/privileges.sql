-- Who may do what, re-applied after every migration run that changed the
-- schema (idempotent). {{schema}}, {{owner}}, {{writer}} and {{reader}} are
-- replaced by the schema and the role names before this runs.
--   owner:  owns the tables and functions; the append function runs as it.
--   writer: may only call append_events and append_event (no INSERT, UPDATE, DELETE, TRUNCATE,
--           no trigger changes: those need the owner).
--   reader: may read the events and stream heads (the verifier).
-- The owner needs CREATE on the schema to be handed its objects.
GRANT USAGE, CREATE ON SCHEMA {{schema}} TO {{owner}};
GRANT USAGE ON SCHEMA {{schema}} TO {{writer}}, {{reader}};
DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass::text AS name FROM pg_catalog.pg_class c
         WHERE c.relnamespace = '{{schema}}'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
           AND c.relname <> 'schema_migrations'
           AND c.relowner <> '{{owner}}'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO {{owner}}', r.name);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure::text AS name FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = '{{schema}}'::regnamespace AND p.proowner <> '{{owner}}'::regrole
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO {{owner}}', r.name);
    END LOOP;
END
$do$;
REVOKE ALL ON ALL TABLES IN SCHEMA {{schema}} FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {{schema}} FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {{schema}}.append_events(text, uuid[], text[], text[], text[], bigint[],
    text[], text[], text[], text[], text[], text[]) TO {{writer}};
GRANT EXECUTE ON FUNCTION {{schema}}.append_event(text, uuid, text, text, text, bigint,
    text, text, text, text, text, text) TO {{writer}};
GRANT SELECT ON ALL TABLES IN SCHEMA {{schema}} TO {{reader}};
