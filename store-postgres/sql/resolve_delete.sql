-- Operator resolution: forget the record.
-- $1 key.
DELETE FROM {schema}.records WHERE key = $1
