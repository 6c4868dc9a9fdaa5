#!/usr/bin/env bash
# The whole test suite on both backends. Starts a throwaway PostgreSQL cluster (unless
# SORI_TEST_PG_URL points at one), runs every test, and removes the cluster afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SORI_TEST_PG_URL:-}" ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    echo "PostgreSQL server binaries not found; installing postgresql (Debian)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  PGTMP=$(mktemp -d /tmp/sori-pg.XXXXXX)
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  RUN=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PGTMP"
    RUN=(runuser -u postgres --)
  fi
  "${RUN[@]}" "$PGBIN/initdb" -D "$PGTMP/data" -A trust -U postgres -E UTF8 >/dev/null
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/pg.log" -w \
    -o "-p $PORT -k $PGTMP -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null
  cleanup() {
    "${RUN[@]}" "$PGBIN/pg_ctl" -D "$PGTMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGTMP"
  }
  trap cleanup EXIT
  export SORI_TEST_PG_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
  echo "throwaway PostgreSQL on port $PORT" >&2
fi

cargo test --workspace --all-targets "$@"
