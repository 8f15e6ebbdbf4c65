#!/usr/bin/env bash
# The test command: starts (or installs) PostgreSQL, Redis, NATS and a Temporal dev
# server on loopback, then runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export TEMPORAL_ADDRESS="${TEMPORAL_ADDRESS:-127.0.0.1:7233}"
exec cargo test --workspace --all-features "$@"
