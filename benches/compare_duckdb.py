"""DuckDB's half of the side-by-side traffic benchmark, and the comparison.

Loads DIR/traffic.parquet into a DuckDB database file, runs benches/queries.sql five times
each, applies DIR/upserts.parquet (INSERT OR REPLACE) and runs them again; then reads
DIR/nyala.json (written by `cargo bench --bench compare -- run DIR`), checks that both engines
returned the same rows, and prints the medians and the ratio Nyala / DuckDB.

Run through benches/compare_duckdb.sh, which builds and runs both halves.
"""

import json
import math
import pathlib
import statistics
import sys
import time

import duckdb

RUNS = 5
HERE = pathlib.Path(__file__).parent


def queries():
    out = []
    for line in (HERE / "queries.sql").read_text().splitlines():
        if line.startswith("-- Q"):
            out.append([line[3:].split(":")[0].strip(), ""])
        elif out and line.strip() and not line.startswith("--"):
            out[-1][1] += line + " "
    return [(n, q.strip().rstrip(";")) for n, q in out]


def cell(v):
    if v is None:
        return None
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def run_queries(con, phase):
    out = {}
    for name, q in queries():
        times, rows = [], None
        for _ in range(RUNS):
            start = time.perf_counter()
            result = con.execute(q).fetchall()
            times.append((time.perf_counter() - start) * 1e3)
            if rows is None:
                rows = [[cell(v) for v in r] for r in result]
        out[name] = {"median_ms": statistics.median(times), "rows": rows}
        print(f"  duckdb {phase} {name}: median {out[name]['median_ms']:.1f} ms", flush=True)
    return out


def same(a, b):
    """Cells equal as numbers (relative 1e-6: REAL values print at single precision, sums
    may run in a different order) or as text."""
    if a is None or b is None:
        return a is b
    try:
        x, y = float(a), float(b)
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        return a == b


def compare(nyala, duck):
    problems = []
    for name in duck:
        if name not in nyala:
            continue  # Nyala's half ran only some queries (NYALA_COMPARE_QUERIES)
        n, d = nyala[name]["rows"], duck[name]["rows"]
        if len(n) != len(d):
            problems.append(f"{name}: {len(n)} rows from Nyala, {len(d)} from DuckDB")
            continue
        for i, (rn, rd) in enumerate(zip(n, d)):
            if len(rn) != len(rd) or not all(same(x, y) for x, y in zip(rn, rd)):
                problems.append(f"{name} row {i}: Nyala {rn}, DuckDB {rd}")
                break
    return problems


def main():
    d = pathlib.Path(sys.argv[1])
    path = d / "duck.db"
    for p in (path, d / "duck.db.wal"):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        """CREATE TABLE traffic (uid INT NOT NULL, lane SMALLINT NOT NULL, ts TIMESTAMP NOT NULL,
        valid SMALLINT, count_c1 INT, count_c2 INT, count_c3 INT, count_c4 INT, count_c5 INT,
        speed_c1 REAL, speed_c2 REAL, speed_c3 REAL, speed_c4 REAL, speed_c5 REAL,
        PRIMARY KEY (uid, lane, ts))"""
    )
    con.execute("CREATE TABLE points (uid INT PRIMARY KEY, road TEXT NOT NULL)")
    con.execute("INSERT INTO points SELECT v, 'road ' || (v % 20) FROM generate_series(0, 999) AS t(v)")
    start = time.perf_counter()
    con.execute(f"INSERT INTO traffic SELECT * FROM read_parquet('{d / 'traffic.parquet'}')")
    con.execute("CHECKPOINT")
    load_s = time.perf_counter() - start
    rows = con.execute("SELECT count(*) FROM traffic").fetchone()[0]
    print(f"  duckdb loaded {rows} rows in {load_s:.1f} s ({rows / load_s:.0f} rows/s)", flush=True)
    flushed = run_queries(con, "flushed")
    start = time.perf_counter()
    con.execute(f"INSERT OR REPLACE INTO traffic SELECT * FROM read_parquet('{d / 'upserts.parquet'}')")
    upsert_s = time.perf_counter() - start
    print(f"  duckdb upserted in {upsert_s:.2f} s", flush=True)
    after = run_queries(con, "after-upserts")
    con.close()
    for p in (path, d / "duck.db.wal"):
        p.unlink(missing_ok=True)

    nyala = json.loads((d / "nyala.json").read_text())
    problems = compare(nyala["flushed"], flushed) + compare(nyala["after_upserts"], after)
    print()
    print(f"traffic queries, {rows} rows, median of {RUNS} runs (ms)")
    print(f"{'query':<6} {'phase':<14} {'nyala':>9} {'duckdb':>9} {'ratio':>7}")
    worst = 0.0
    for phase, n, dd in (("flushed", nyala["flushed"], flushed), ("after upserts", nyala["after_upserts"], after)):
        for name in (q for q in dd if q in n):
            a, b = n[name]["median_ms"], dd[name]["median_ms"]
            worst = max(worst, a / b)
            print(f"{name:<6} {phase:<14} {a:>9.1f} {b:>9.1f} {a / b:>7.2f}")
    print(f"load: nyala {nyala['load_s']:.1f} s, duckdb {load_s:.1f} s; "
          f"upserts: nyala {nyala['upsert_s']:.2f} s, duckdb {upsert_s:.2f} s")
    print(f"worst ratio {worst:.2f} (target <= 1.0)")
    if problems:
        print("RESULTS DIFFER:")
        for p in problems:
            print("  " + p)
        sys.exit(1)
    print("results: identical in both engines")


if __name__ == "__main__":
    main()
