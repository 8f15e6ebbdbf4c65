-- Fencing numbers from one sequence per schema, so that a key's fence
-- strictly increases for the key's whole life: across release, expiry,
-- reaping and operator deletion, when the row that held the previous fence
-- is gone, and not only from one claim of a record to the next.
--
-- `{schema}` is replaced by the store's schema name before this file runs.

CREATE SEQUENCE {schema}.fences AS bigint MINVALUE 1 NO CYCLE;

-- An upgraded schema continues above every fence already stored.
SELECT setval('{schema}.fences', coalesce(max(fence), 0) + 1, false)
FROM {schema}.records;
