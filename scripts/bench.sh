#!/usr/bin/env bash
# Builds release binaries and runs the upsert benchmark on SQLite and PostgreSQL.
# Extra arguments go to every run (e.g. --seconds 20).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p sori -p sori-bench
echo "== $(nproc) cores, $(date -u +%Y-%m-%d)"
./target/release/sori-bench upsert --backend sqlite "$@"
./scripts/with-postgres.sh bash -c './target/release/sori-bench upsert --backend postgres --pg-url "$SORI_PG_URL" "$@"' bench "$@"
