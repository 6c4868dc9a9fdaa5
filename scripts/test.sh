#!/usr/bin/env bash
# The whole test suite, on SQLite and on PostgreSQL. Uses SORI_TEST_PG_URL when set,
# otherwise starts a throwaway PostgreSQL cluster for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${SORI_TEST_PG_URL:-}" ]; then
  exec cargo test --workspace --all-targets "$@"
fi
exec ./scripts/with-postgres.sh bash -c 'SORI_TEST_PG_URL="$SORI_PG_URL" cargo test --workspace --all-targets "$@"' test "$@"
