#!/usr/bin/env python3
"""Nyala vs PostgreSQL through the same Python client (psycopg 3), side by side.

Run by benches/compare_postgres.sh, which starts both servers. Measures, on the traffic schema:

- loading N rows with COPY FROM STDIN (rows/s);
- point lookups by the full primary key, one client, a prepared statement (p50/p99 us);
- upserts with INSERT ... ON CONFLICT DO UPDATE, executemany in batches of 1,000 rows, one
  transaction per batch (rows/s; half the keys exist);
- optionally (--queries FILE) the traffic queries Q1-Q6 through psycopg on Nyala (median ms).

Prints one JSON object per measurement and a table.
"""

import argparse
import datetime as dt
import io
import json
import random
import statistics
import sys
import time

import psycopg

COLUMNS = (
    "uid INT, lane SMALLINT, ts TIMESTAMP, valid SMALLINT, "
    + ", ".join(f"count_c{i} INT" for i in range(1, 6))
    + ", "
    + ", ".join(f"speed_c{i} REAL" for i in range(1, 6))
    + ", PRIMARY KEY (uid, lane, ts)"
)
T0 = dt.datetime(2026, 11, 15)


def rows(points, minutes, seed=7):
    rnd = random.Random(seed)
    for m in range(minutes):
        ts = T0 + dt.timedelta(minutes=m)
        for uid in range(points):
            for lane in (1, 2):
                counts = [rnd.randrange(0, 30) for _ in range(5)]
                speeds = [round(rnd.uniform(20, 130), 1) for _ in range(5)]
                yield (uid, lane, ts, 0 if rnd.random() < 0.95 else 1, *counts, *speeds)


def copy_text(batch):
    out = io.StringIO()
    for r in batch:
        out.write("\t".join(str(v) for v in r))
        out.write("\n")
    return out.getvalue()


def load(conn, points, minutes):
    conn.execute("DROP TABLE IF EXISTS traffic")
    conn.execute(f"CREATE TABLE traffic ({COLUMNS})")
    n = 0
    started = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy("COPY traffic FROM STDIN") as copy:
            batch = []
            for r in rows(points, minutes):
                batch.append(r)
                if len(batch) == 50_000:
                    copy.write(copy_text(batch))
                    n += len(batch)
                    batch = []
            copy.write(copy_text(batch))
            n += len(batch)
    return n, time.perf_counter() - started


def lookups(conn, points, minutes, count):
    rnd = random.Random(11)
    keys = [
        (rnd.randrange(points), rnd.choice((1, 2)), T0 + dt.timedelta(minutes=rnd.randrange(minutes)))
        for _ in range(count)
    ]
    sql = "SELECT * FROM traffic WHERE uid = %s AND lane = %s AND ts = %s"
    times = []
    with conn.cursor(binary=True) as cur:
        for i, k in enumerate(keys):
            t = time.perf_counter()
            cur.execute(sql, k, prepare=True)
            row = cur.fetchone()
            times.append(time.perf_counter() - t)
            assert row is not None and row[0] == k[0], (k, row)
    times = sorted(times[len(times) // 10 :])  # the first tenth warms up
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def upserts(conn, points, minutes, total):
    rnd = random.Random(13)
    sql = (
        "INSERT INTO traffic (uid, lane, ts, valid, count_c1, speed_c1) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (uid, lane, ts) DO UPDATE SET count_c1 = EXCLUDED.count_c1, speed_c1 = EXCLUDED.speed_c1"
    )
    new_minute = minutes
    started = time.perf_counter()
    done = 0
    while done < total:
        batch = []
        for _ in range(1000):
            if rnd.random() < 0.5:
                ts = T0 + dt.timedelta(minutes=rnd.randrange(minutes))
            else:
                ts = T0 + dt.timedelta(minutes=new_minute, seconds=rnd.randrange(60))
            batch.append((rnd.randrange(points), rnd.choice((1, 2)), ts, 0, rnd.randrange(30), rnd.uniform(20, 130)))
        # One key at most once per batch (PostgreSQL refuses a DO UPDATE touching a row twice).
        batch = list({(b[0], b[1], b[2]): b for b in batch}.values())
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(sql, batch)
        done += len(batch)
        new_minute += 1
    return done / (time.perf_counter() - started)


def queries(conn, path, runs):
    statements = []
    name, lines = None, []
    for line in open(path).read().splitlines():
        if line.startswith("-- Q"):
            name = line[3:].split(":")[0]
        elif line.startswith("--") or not line.strip():
            continue
        else:
            lines.append(line)
            if line.rstrip().endswith(";"):
                statements.append((name, " ".join(lines).rstrip(";")))
                lines = []
    out = {}
    for name, sql in statements:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            conn.execute(sql).fetchall()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nyala", required=True, help="conninfo of Nyala")
    p.add_argument("--postgres", required=True, help="conninfo of PostgreSQL")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--minutes", type=int, default=500)
    p.add_argument("--lookups", type=int, default=5000)
    p.add_argument("--upserts", type=int, default=20000)
    p.add_argument("--queries", help="queries file, run on Nyala's existing traffic table")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()

    results = {}
    if a.queries:
        with psycopg.connect(a.nyala, autocommit=True) as c:
            results["queries_ms"] = queries(c, a.queries, a.runs)
        print(json.dumps(results))
        return
    for name, dsn in (("postgres", a.postgres), ("nyala", a.nyala)):
        with psycopg.connect(dsn, autocommit=True) as c:
            n, secs = load(c, a.points, a.minutes)
            if name == "postgres":
                c.execute("ANALYZE traffic")
            p50, p99 = lookups(c, a.points, a.minutes, a.lookups)
            ups = upserts(c, a.points, a.minutes, a.upserts)
            results[name] = {
                "rows": n,
                "copy_rows_per_s": round(n / secs),
                "lookup_p50_us": round(p50, 1),
                "lookup_p99_us": round(p99, 1),
                "upsert_rows_per_s": round(ups),
            }
            print(json.dumps({name: results[name]}), flush=True)
    pg, ny = results["postgres"], results["nyala"]
    print(f"{'':28}{'Nyala':>12}{'PostgreSQL':>12}{'ratio':>8}")
    for k, better in (
        ("copy_rows_per_s", "higher"),
        ("lookup_p50_us", "lower"),
        ("lookup_p99_us", "lower"),
        ("upsert_rows_per_s", "higher"),
    ):
        print(f"{k:28}{ny[k]:>12}{pg[k]:>12}{ny[k] / pg[k]:>8.2f}  ({better} is better)")


if __name__ == "__main__":
    sys.exit(main())
