#!/usr/bin/env bash
# Nyala vs PostgreSQL 15 through psycopg 3 on this machine (release build; takes a while).
#   bash benches/compare_postgres.sh [ROWS_POINTS] [MINUTES]
# Starts a throwaway PostgreSQL cluster (Debian's postgresql-15, installed if missing; default
# settings, fsync on) and `nyala serve` (the `fast` profile, sync durability) on temporary
# directories, runs benches/compare_postgres.py against both (COPY load, prepared point lookups,
# ON CONFLICT upserts in 1,000-row batches), then loads the 10M-row dataset of
# benches/compare_duckdb.sh (if generated) into Nyala with `nyala load`, restarts it (which
# flushes) and times Q1-Q6 through psycopg; compare with the in-process "flushed" figures of
# `cargo bench -p nyala-sql --profile fast --bench compare -- run DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
POINTS="${1:-1000}"
MINUTES="${2:-500}"
VENV="$HOME/.cache/nyala/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "psycopg[binary]==3.2.*"
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15
fi
cargo build --profile fast --bin nyala
WORK="$(mktemp -d)"
chown -R postgres "$WORK" 2>/dev/null || true
cleanup() {
  [ -n "${NYALA_PID:-}" ] && kill "$NYALA_PID" 2>/dev/null || true
  runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$WORK/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$WORK/pg" -o "-p 55432 -k $WORK" -l "$WORK/pg.log" start >/dev/null
target/fast/nyala serve --data-dir "$WORK/nyala" --pg-addr 127.0.0.1:55433 \
  --grpc-addr 127.0.0.1:57050 --http-addr 127.0.0.1:58050 --log warn &
NYALA_PID=$!
sleep 3
"$VENV/bin/python" benches/compare_postgres.py \
  --postgres "host=127.0.0.1 port=55432 user=postgres dbname=postgres" \
  --nyala "host=127.0.0.1 port=55433 user=nyala dbname=nyala" \
  --points "$POINTS" --minutes "$MINUTES"
DATA="$HOME/.cache/nyala/compare/traffic.parquet"
if [ -f "$DATA" ]; then
  target/fast/nyala sql --grpc-addr 127.0.0.1:57050 -c "DROP TABLE IF EXISTS traffic"
  target/fast/nyala load "$DATA" --table traffic --create --key uid,lane,ts --grpc-addr 127.0.0.1:57050 >/dev/null
  target/fast/nyala sql --grpc-addr 127.0.0.1:57050 -c "CREATE TABLE points (uid INT PRIMARY KEY, road TEXT NOT NULL)"
  target/fast/nyala sql --grpc-addr 127.0.0.1:57050 -c "INSERT INTO points SELECT v, 'road ' || (v % 20) FROM generate_series(0, 999) AS t(v)"
  # A graceful restart flushes every table: the state the in-process figures of
  # `cargo bench --bench compare -- run` ("flushed") are measured in.
  kill -TERM "$NYALA_PID"; wait "$NYALA_PID" || true
  target/fast/nyala serve --data-dir "$WORK/nyala" --pg-addr 127.0.0.1:55433 \
    --grpc-addr 127.0.0.1:57050 --http-addr 127.0.0.1:58050 --log warn &
  NYALA_PID=$!
  sleep 3
  "$VENV/bin/python" benches/compare_postgres.py --postgres unused \
    --nyala "host=127.0.0.1 port=55433 user=nyala dbname=nyala" --queries benches/queries.sql
fi
