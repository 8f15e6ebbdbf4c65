#!/usr/bin/env bash
# The raw ceilings of the PostgreSQL store's own statements on this machine,
# measured with pgbench (prepared statements): the figures the store's HTTP
# numbers in BENCHMARKS.md are read against.
#
#   benches/pgbench/run.sh                 # 16 clients, 10 s a script, 3 runs
#   CLIENTS=32 SECS=20 RUNS=5 benches/pgbench/run.sh
#
# Uses two private schemas (dropped at the end): `pgbench_idem` with the
# store's migrations as they are, and `pgbench_idem_notify` where the
# completion trigger notifies on every completion (the store before
# migration 3), so the cost of NOTIFY is measured on the store's own
# statements. The statements are the store's files from store-postgres/sql,
# with their parameters written in. `first_execution` is the store's path
# for a new key (`claim_fast.sql`, then `complete.sql`), `*_general` the same
# with `claim.sql`, `first_execution_async_claim` with the claim of
# `ClaimCommit::Asynchronous`; `claim_new` / `claim_fast_new` are a new key's
# claim alone. `peer_request` is what the peer `axum-idempotent` runs per
# request on PostgreSQL (its statements as `pg_stat_statements` shows them,
# on a table of its shape): one transaction with a read and an upsert.
set -euo pipefail
cd "$(dirname "$0")/../.."
DB="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
CLIENTS="${CLIENTS:-16}"
SECS="${SECS:-10}"
RUNS="${RUNS:-3}"
SEED=10000
work="${PGBENCH_WORK:-$(mktemp -d)}"
trap 'rm -rf "$work"; psql "$DB" -qc "DROP SCHEMA IF EXISTS pgbench_idem CASCADE; DROP SCHEMA IF EXISTS pgbench_idem_notify CASCADE" >/dev/null 2>&1 || true' EXIT

KEY="decode(lpad(to_hex(:id::bigint), 64, '0'), 'hex')"
FP="decode(repeat('ab', 32), 'hex')"

# What claim.sql's `{claim_commit}` becomes: nothing (ClaimCommit::Durable),
# or with CLAIM_COMMIT=async the column ClaimCommit::Asynchronous adds.
ASYNC_COLUMN=", set_config('synchronous_commit', 'off', true) AS claim_commit"

# A statement file with the schema and the parameters written in.
statement() { # file schema $1 $2 ... -> stdout
  local file="$1" schema="$2"; shift 2
  local text column=""
  [ "${CLAIM_COMMIT:-}" = async ] && column="$ASYNC_COLUMN"
  text="$(grep -v '^[[:space:]]*--' "store-postgres/sql/$file" \
    | sed -e "s/{schema}/\"$schema\"/g" -e "s/{claim_commit}/$column/g")"
  local i=1
  for value in "$@"; do
    text="$(printf '%s' "$text" | perl -pe "s/\\\$$i(?![0-9])/\Q$value\E/g; s/\\\\(.)/\$1/g")"
    i=$((i + 1))
  done
  printf '%s' "$text"
}

setup() { # schema
  local s="$1"
  psql "$DB" -qc "DROP SCHEMA IF EXISTS $s CASCADE; CREATE SCHEMA $s"
  for f in store-postgres/migrations/*.sql; do
    sed -e "s/{schema}/\"$s\"/g" -e "s/{channel}/${s}_changes/g" "$f" | psql "$DB" -q -v ON_ERROR_STOP=1 >/dev/null
  done
  psql "$DB" -q -v ON_ERROR_STOP=1 -c "INSERT INTO $s.records
      (key, fingerprint, state, fence, attempts, claim_kind, outcome, created_at, finished_at, expires_at)
    SELECT decode(lpad(to_hex(i), 64, '0'), 'hex'), $(echo "$FP" | sed 's/:id/i/'), 'COMPLETED', i, 1, 'NEW',
           '\\x56'::bytea, now(), now(), now() + interval '1 day'
    FROM generate_series(1, $SEED) i" >/dev/null
  psql "$DB" -qc "SELECT setval('$s.fences', $SEED + 1)" >/dev/null
}

setup pgbench_idem
setup pgbench_idem_notify
psql "$DB" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
DROP TRIGGER records_left_pending ON pgbench_idem_notify.records;
CREATE TRIGGER records_left_pending AFTER UPDATE ON pgbench_idem_notify.records FOR EACH ROW
  WHEN (OLD.state = 'PENDING' AND NEW.state <> 'PENDING')
  EXECUTE FUNCTION pgbench_idem_notify.notify_change();
SQL

replay_script() { # name body
  { echo "\\set id random(1, $SEED)"; printf '%s;\n' "$2"; } > "$work/$1.sql"
}
replay_script read "SELECT key, state, fence, outcome FROM pgbench_idem.records WHERE key = $KEY"
replay_script peek "$(statement peek.sql pgbench_idem "$KEY" "$FP" 3 0)"
replay_script claim_replay "$(statement claim.sql pgbench_idem "$KEY" "$FP" "gen_random_uuid()" 30000 86400000 3 0)"
replay_script claim_fast_replay "$(statement claim_fast.sql pgbench_idem "$KEY" "$FP" "gen_random_uuid()" 30000 86400000 3 0)"

new_key_script() { # name claim-file
  { echo "\\set id random($((SEED + 1)), 2000000000)"
    printf '%s;\n' "$(statement "$2" pgbench_idem "$KEY" "$FP" "gen_random_uuid()" 30000 86400000 3 0)"; } > "$work/$1.sql"
}
new_key_script claim_new claim.sql
new_key_script claim_fast_new claim_fast.sql

first_execution() { # name schema [claim-file]
  {
    echo "\\set id random($((SEED + 1)), 2000000000)"
    printf '%s\n\\gset\n' "$(statement "${3:-claim_fast.sql}" "$2" "$KEY" "$FP" "gen_random_uuid()" 30000 86400000 3 0)"
    printf '%s;\n' "$(statement complete.sql "$2" "$KEY" ":token::uuid" ":fence" "'\\x56'::bytea" "NULL" 86400000 0)"
  } > "$work/$1.sql"
}
first_execution first_execution pgbench_idem
first_execution first_execution_general pgbench_idem claim.sql
first_execution first_execution_notify_all pgbench_idem_notify
CLAIM_COMMIT=async first_execution first_execution_async_claim pgbench_idem

# The peer's request: a read and an upsert of its session row, one commit.
psql "$DB" -qc "CREATE TABLE pgbench_idem.t_sessions (session_id text NOT NULL, field text NOT NULL,
    value bytea NOT NULL, hot_cache_ttl bigint, expires_at timestamptz, PRIMARY KEY (session_id, field));
  CREATE INDEX ON pgbench_idem.t_sessions (expires_at)" >/dev/null
printf '%s\n' "\\set id random(1, 2000000000)" "BEGIN;" \
  "SELECT value FROM pgbench_idem.t_sessions WHERE session_id = :id::text AND field = 'idem' AND expires_at > now();" \
  "INSERT INTO pgbench_idem.t_sessions (session_id, field, value, hot_cache_ttl, expires_at) VALUES (:id::text, 'idem', decode(repeat('ab', 120), 'hex'), 0, now() + interval '1 day') ON CONFLICT (session_id, field) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, hot_cache_ttl = excluded.hot_cache_ttl;" \
  "COMMIT;" > "$work/peer_request.sql"

# The issue's facts, on a plain row: an UPDATE per transaction, with and
# without a NOTIFY in the same transaction.
psql "$DB" -qc "CREATE TABLE pgbench_idem.plain (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
  INSERT INTO pgbench_idem.plain SELECT i FROM generate_series(1, 1000) i" >/dev/null
printf '%s\n' "\\set id random(1, 1000)" "UPDATE pgbench_idem.plain SET n = n + 1 WHERE id = :id;" > "$work/update.sql"
printf '%s\n' "\\set id random(1, 1000)" "BEGIN;" "UPDATE pgbench_idem.plain SET n = n + 1 WHERE id = :id;" \
  "SELECT pg_notify('pgbench_idem_bench', 'x');" "COMMIT;" > "$work/update_notify.sql"

tps() { # script -> "median lo hi"
  local out=()
  for _ in $(seq 1 "$RUNS"); do
    out+=("$(pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" -f "$work/$1.sql" "$DB" 2>/dev/null \
      | awk '/^tps = / { printf "%.0f", $3 }')")
  done
  printf '%s\n' "${out[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "%s %s %s", v[int((NR + 1) / 2)], v[1], v[NR] }'
}

echo "pgbench -M prepared, $CLIENTS clients, ${SECS} s a run, median of $RUNS runs (range)"
echo
echo "| statement | tps | range |"
echo "|---|---:|---:|"
for s in read peek claim_replay claim_fast_replay claim_new claim_fast_new first_execution first_execution_general \
  first_execution_async_claim first_execution_notify_all peer_request update update_notify; do
  read -r median lo hi <<< "$(tps "$s")"
  echo "| \`$s\` | $median | $lo–$hi |"
done
