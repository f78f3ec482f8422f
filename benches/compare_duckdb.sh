#!/usr/bin/env bash
# Side-by-side traffic benchmark, Nyala vs DuckDB (release build; takes a while).
#   bash benches/compare_duckdb.sh [DIR]     (default DIR: ~/.cache/nyala/compare)
# Generates the dataset once (NYALA_BENCH_ROWS rows, default 10M, as Parquet), runs Nyala's
# half (`cargo bench --bench compare`), then DuckDB's in a Python venv, and prints the medians,
# the ratios Nyala / DuckDB, and whether both engines returned the same rows.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-$HOME/.cache/nyala/compare}"
VENV="$HOME/.cache/nyala/bench-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check duckdb pytz
cargo bench -p nyala-sql --profile fast --bench compare -- generate "$DIR"
cargo bench -p nyala-sql --profile fast --bench compare -- run "$DIR"
"$VENV/bin/python" benches/compare_duckdb.py "$DIR"
