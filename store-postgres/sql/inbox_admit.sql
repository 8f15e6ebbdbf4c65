SELECT decision, last_applied FROM {schema}.inbox_admit($1, $2, $3, $4)
