#!/usr/bin/env bash
# The whole test suite, on SQLite and on PostgreSQL. Uses SORI_TEST_PG_URL when set,
# otherwise starts a throwaway PostgreSQL cluster for the run. Ends with one summary line
# ("tests: N passed, M failed") over every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SORI_TEST_PG_URL:-}" ]; then
  # Re-enter this script inside a throwaway cluster, with its URL as the test database.
  exec ./scripts/with-postgres.sh bash -c 'SORI_TEST_PG_URL="$SORI_PG_URL" exec "$0" "$@"' "$0" "$@"
fi

# The real JavaScript clients the tests drive: Node packages from the lockfile, and
# Debian's Chromium for the web SDK.
if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
  # `npm install` installs exactly the lockfile (npm ci rejects this lockfile because npm
  # leaves out platform-specific optional packages it does not need here).
  (cd tests/js && npm install --no-audit --no-fund)
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "Chromium not found; installing Debian's chromium" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
