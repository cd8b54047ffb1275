#!/usr/bin/env bash
# The test command: starts the PostgreSQL server the SQL tests need (installing it when missing),
# then runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${GENJOBS_TEST_PG_DSN:-}" ]; then
  eval "$(bash scripts/start_postgres.sh)"
fi
export GENJOBS_TEST_PG_DSN
python3 -m pytest -q "$@"
