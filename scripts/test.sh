#!/usr/bin/env bash
# The test command: starts the PostgreSQL server the SQL tests need (installing it when missing)
# and the real Supabase Storage server (building it once into .genjobs/cache when its tarball is
# there, see scripts/storage_server.sh), then runs the whole suite. Extra arguments go to pytest.
# On exit it stops exactly what it started: the storage instance, and PostgreSQL only when this
# run started it (a server that was already running keeps running).
set -euo pipefail
cd "$(dirname "$0")/.."

pg_started=0
storage_instance=""

cleanup() {
  local status=$?
  if [ -n "$storage_instance" ]; then
    bash scripts/storage_server.sh stop --instance "$storage_instance" || true
    rm -rf "$storage_instance"
  fi
  if [ "$pg_started" = 1 ]; then
    bash scripts/start_postgres.sh --stop || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${GENJOBS_TEST_PG_DSN:-}" ]; then
  eval "$(bash scripts/start_postgres.sh)"
  pg_started="${GENJOBS_TEST_PG_STARTED:-0}"
fi
export GENJOBS_TEST_PG_DSN

if [ -z "${GENJOBS_TEST_SUPABASE_URL:-}" ]; then
  storage_instance="$(mktemp -d "${TMPDIR:-/tmp}/genjobs-storage.XXXXXX")"
  started_at=$SECONDS
  storage_env="$(bash scripts/storage_server.sh start --if-available --instance "$storage_instance")"
  if [ -n "$storage_env" ]; then
    eval "$storage_env"
    export GENJOBS_TEST_SUPABASE_URL GENJOBS_TEST_STORAGE_SERVICE_KEY GENJOBS_TEST_STORAGE_ANON_KEY \
      GENJOBS_TEST_STORAGE_JWT_SECRET GENJOBS_TEST_STORAGE_DSN GENJOBS_TEST_STORAGE_UPSTREAM_URL
    echo "test.sh: real storage server ready in $((SECONDS - started_at)) s" >&2
  fi
fi

python3 -m pytest -q "$@"
