SELECT version, checksum FROM {schema}.migrations ORDER BY version
