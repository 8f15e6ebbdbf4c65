SELECT last_version FROM {schema}.inbox_versions
WHERE consumer = $1 AND aggregate = $2 AND last_version > 0
