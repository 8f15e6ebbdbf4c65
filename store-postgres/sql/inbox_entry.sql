SELECT disposition FROM {schema}.inbox_entries WHERE consumer = $1 AND message_id = $2
