#!/usr/bin/env bash
# Builds release binaries and runs the benchmarks on SQLite and PostgreSQL:
#   upsert  — member upserts over the Open API (driven by wrk);
#   ingest  — events through the Segment-compatible API (batches of 100, and one per
#             request), each against the no-op endpoint of the same server (needs wrk);
#   audience — counts over 1,000,000 generated users on Sori, PostgreSQL and DuckDB
#             (needs Python's duckdb; about 20 minutes, most of it loading).
# Usage: scripts/bench.sh [upsert|ingest|audience|all] [extra args for every run]
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
[ $# -gt 0 ] && shift
if ! command -v wrk >/dev/null; then
  echo "wrk not found; installing Debian's wrk" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -p sori -p sori-bench
echo "== $(nproc) cores, $(date -u +%Y-%m-%d)"
for b in upsert ingest; do
  if [ "$which" = all ] || [ "$which" = "$b" ]; then
    ./target/release/sori-bench "$b" --backend sqlite "$@"
    ./scripts/with-postgres.sh bash -c './target/release/sori-bench "$0" --backend postgres --pg-url "$SORI_PG_URL" "$@"' "$b" "$@"
  fi
done
if [ "$which" = all ] || [ "$which" = audience ]; then
  if ! python3 -c 'import duckdb' 2>/dev/null; then
    echo "installing duckdb from PyPI" >&2
    python3 -m pip install -q duckdb 2>/dev/null || python3 -m pip install -q --break-system-packages duckdb
  fi
  ./scripts/with-postgres.sh bash -c './target/release/sori-bench audience --pg-url "$SORI_PG_URL" "$@"' audience "$@"
fi
