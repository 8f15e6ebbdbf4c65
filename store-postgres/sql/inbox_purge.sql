-- Deletes up to $2 entries processed more than $1 milliseconds ago. Versions
-- stay: they keep ordering (and stale detection) after entries are gone.
DELETE FROM {schema}.inbox_entries
WHERE ctid IN (
    SELECT ctid FROM {schema}.inbox_entries
    WHERE processed_at < now() - make_interval(secs => $1::bigint / 1000.0)
    LIMIT $2
)
