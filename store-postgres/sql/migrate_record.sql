-- $1 version, $2 description, $3 checksum (SHA-256 of the migration file).
INSERT INTO {schema}.migrations (version, description, checksum) VALUES ($1, $2, $3)
