#!/usr/bin/env python3
"""Headless Apache Superset end-to-end check against Nyala.

Usage (with the Python of a venv that has apache-superset and psycopg2-binary):

    NYALA_PG_URL=postgresql+psycopg2://nyala:x@127.0.0.1:25433/nyala \
        python tests/superset/e2e.py [SUPERSET_HOME] [--port 18088] [--keep]

SUPERSET_HOME (argument, or env SUPERSET_HOME; default: a new temp dir) gets
superset_config.py, superset.log and nyala_sql.log (every statement Superset
sent to Nyala, with Nyala's error where there was one). The metadata database
is SQLite in a fresh temp dir. The script (re)creates and loads the `traffic`
table in Nyala, then drives Superset only through its REST API. Each step prints
OK or FAIL; the exit code is 1 if any step failed.
"""

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from collections import defaultdict

import psycopg2
import requests

T0 = dt.datetime(2026, 11, 15)
T1 = dt.datetime(2026, 11, 16)
UIDS = (101, 102, 103)
EPOCH = dt.datetime(1970, 1, 1)

CONFIG_TEMPLATE = r'''
import json, os, threading
import psycopg2.extensions

SECRET_KEY = {secret!r}
SQLALCHEMY_DATABASE_URI = {meta_uri!r}
WTF_CSRF_ENABLED = False
TALISMAN_ENABLED = False
FEATURE_FLAGS = {{}}
CACHE_CONFIG = {{"CACHE_TYPE": "NullCache"}}
DATA_CACHE_CONFIG = {{"CACHE_TYPE": "NullCache"}}
RATELIMIT_STORAGE_URI = "memory://"
AUTH_RATE_LIMITED = False
SQLLAB_ASYNC_TIME_LIMIT_SEC = 60
SQLLAB_TIMEOUT = 60
SUPERSET_WEBSERVER_TIMEOUT = 120

_SQL_LOG = {sql_log!r}
_LOCK = threading.Lock()


def _write(rec):
    with _LOCK, open(_SQL_LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")


class NyalaLoggingCursor(psycopg2.extensions.cursor):
    """Records every statement sent to Nyala (as psycopg2 renders it) and the error."""

    def _run(self, fn, sql, args):
        try:
            text = self.mogrify(sql, args).decode() if args is not None else str(sql)
        except Exception:  # noqa: BLE001
            text = str(sql)
        try:
            out = fn(sql, args)
        except Exception as e:  # noqa: BLE001
            _write({{"sql": text, "error": (getattr(e, "pgerror", None) or str(e)).strip(),
                     "sqlstate": getattr(e, "pgcode", None)}})
            raise
        _write({{"sql": text}})
        return out

    def execute(self, sql, args=None):
        return self._run(super().execute, sql, args)

    def executemany(self, sql, args):
        return self._run(super().executemany, sql, None)


def DB_CONNECTION_MUTATOR(uri, params, username, security_manager, source):
    if uri.drivername.startswith("postgresql"):
        params.setdefault("connect_args", {{}})["cursor_factory"] = NyalaLoggingCursor
    return uri, params
'''


# ---------------------------------------------------------------- test data


def gen_rows():
    """Per-minute rows for 3 uids from 2026-11-15 00:00 to 2026-11-16 00:00 inclusive."""
    rows = []
    for uid in UIDS:
        t, m = T0, 0
        while t <= T1:
            speed = 40.0 + uid % 7 + 10 * ((m // 60) % 5) + (m % 13) * 0.25 + (m % 7) * 0.5
            rows.append((uid, 1 + m % 2, t, speed, (uid * m) % 17))
            t += dt.timedelta(minutes=1)
            m += 1
    return rows


def expected_hourly(rows):
    """AVG(speed) per (hour, uid) over [T0, T1), computed in Python."""
    acc = defaultdict(list)
    for uid, _lane, ts, speed, _c in rows:
        if T0 <= ts < T1:
            acc[(ts.replace(minute=0, second=0, microsecond=0), uid)].append(speed)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def libpq_url(sqla_url):
    u = urllib.parse.urlsplit(sqla_url)
    return urllib.parse.urlunsplit(("postgresql",) + tuple(u[1:]))


def load_data(pg_url, rows):
    conn = psycopg2.connect(libpq_url(pg_url))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS traffic")
    cur.execute(
        "CREATE TABLE traffic (uid INT, lane SMALLINT, ts TIMESTAMP, speed REAL,"
        " count_c1 INT, PRIMARY KEY (uid, lane, ts))"
    )
    for i in range(0, len(rows), 1000):
        batch = rows[i : i + 1000]
        values = b",".join(cur.mogrify("(%s,%s,%s,%s,%s)", r) for r in batch)
        cur.execute(b"INSERT INTO traffic VALUES " + values)
    cur.execute("SELECT count(*) FROM traffic")
    n = cur.fetchone()[0]
    conn.close()
    if n != len(rows):
        raise AssertionError(f"traffic has {n} rows, inserted {len(rows)}")
    return f"{n} rows"


# ---------------------------------------------------------------- harness


class Runner:
    def __init__(self, sql_log):
        self.failed = []
        self.sql_log = sql_log
        self.ctx = {}

    def _sql_pos(self):
        try:
            return os.path.getsize(self.sql_log)
        except OSError:
            return 0

    def step(self, name, fn):
        pos = self._sql_pos()
        t = time.time()
        try:
            detail = fn()
            print(f"[ OK ] {name} ({time.time() - t:.1f}s){': ' + str(detail) if detail else ''}",
                  flush=True)
            return True
        except Exception as e:  # noqa: BLE001
            self.failed.append(name)
            print(f"[FAIL] {name} ({time.time() - t:.1f}s): {e}", flush=True)
            if not isinstance(e, (AssertionError, HttpError)):
                traceback.print_exc()
            self._print_sql_errors(pos)
            return False

    def _print_sql_errors(self, pos):
        try:
            with open(self.sql_log) as f:
                f.seek(pos)
                recs = [json.loads(line) for line in f if line.strip()]
        except OSError:
            return
        for r in recs:
            if "error" in r:
                print(f"       SQL sent to Nyala: {r['sql']}")
                print(f"       Nyala error [{r.get('sqlstate')}]: {r['error']}")


class HttpError(Exception):
    pass


def check(resp, *ok):
    ok = ok or (200,)
    if resp.status_code not in ok:
        raise HttpError(f"HTTP {resp.status_code} {resp.request.method} {resp.url}\n       body: "
                        + resp.text[:3000])
    return resp.json()


def ms_to_dt(v):
    if isinstance(v, (int, float)):
        return EPOCH + dt.timedelta(milliseconds=v)
    return dt.datetime.fromisoformat(str(v).replace("Z", "")).replace(tzinfo=None)


def compare_series(data, expected, label):
    got = {}
    for row in data:
        got[(ms_to_dt(row["ts"]), int(row["uid"]))] = row[label]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    bad = [(k, got[k], expected[k]) for k in sorted(set(got) & set(expected))
           if got[k] is None or abs(got[k] - expected[k]) > 1e-6 * max(1.0, abs(expected[k]))]
    if missing or extra or bad:
        raise AssertionError(
            f"chart data != Python: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} extra (e.g. {extra[:3]}), {len(bad)} wrong (e.g. {bad[:3]})")
    return f"{len(got)} (hour, uid) points match"


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("home", nargs="?", default=os.environ.get("SUPERSET_HOME"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("SUPERSET_PORT", "18088")))
    ap.add_argument("--keep", action="store_true", help="keep the metadata DB temp dir")
    args = ap.parse_args()
    pg_url = os.environ.get("NYALA_PG_URL")
    if not pg_url:
        sys.exit("set NYALA_PG_URL, e.g. postgresql+psycopg2://nyala:x@127.0.0.1:25433/nyala")
    home = os.path.abspath(args.home or tempfile.mkdtemp(prefix="superset-home-"))
    os.makedirs(home, exist_ok=True)
    meta_dir = tempfile.mkdtemp(prefix="superset-meta-")
    sql_log = os.path.join(home, "nyala_sql.log")
    open(sql_log, "w").close()
    cfg = os.path.join(home, "superset_config.py")
    with open(cfg, "w") as f:
        f.write(CONFIG_TEMPLATE.format(
            secret=os.urandom(24).hex(),
            meta_uri="sqlite:///" + os.path.join(meta_dir, "superset.db"),
            sql_log=sql_log))
    env = dict(os.environ, SUPERSET_CONFIG_PATH=cfg, SUPERSET_HOME=home, FLASK_APP="superset")
    superset_bin = os.environ.get("SUPERSET_BIN") or os.path.join(
        os.path.dirname(sys.executable), "superset")
    base = f"http://127.0.0.1:{args.port}"
    log_path = os.path.join(home, "superset.log")
    print(f"superset home: {home}\nmetadata DB: {meta_dir}\nNyala: {pg_url}", flush=True)

    r = Runner(sql_log)
    rows = gen_rows()
    expected = expected_hourly(rows)
    server = None
    s = requests.Session()
    ctx = {}

    def sh(*cmd):
        def run():
            p = subprocess.run([superset_bin, *cmd], env=env, capture_output=True, text=True,
                               timeout=900)
            with open(log_path, "a") as lf:
                lf.write(f"\n$ superset {' '.join(cmd)}\n{p.stdout}\n{p.stderr}\n")
            if p.returncode != 0:
                raise AssertionError(f"exit {p.returncode}: {(p.stdout + p.stderr)[-3000:]}")
        return run

    try:
        r.step("load traffic into Nyala (psycopg2)", lambda: load_data(pg_url, rows))
        ok = r.step("superset db upgrade", sh("db", "upgrade"))
        ok = ok and r.step("superset fab create-admin", sh(
            "fab", "create-admin", "--username", "admin", "--firstname", "Ad", "--lastname",
            "Min", "--email", "admin@example.com", "--password", "admin"))
        ok = ok and r.step("superset init", sh("init"))
        if not ok:
            return 1

        def start():
            nonlocal server
            lf = open(log_path, "a")
            server = subprocess.Popen(
                [superset_bin, "run", "-h", "127.0.0.1", "-p", str(args.port), "--with-threads"],
                env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + 180
            while time.time() < deadline:
                if server.poll() is not None:
                    raise AssertionError(f"superset run exited {server.returncode}; see {log_path}")
                try:
                    if requests.get(base + "/health", timeout=5).status_code == 200:
                        return f"pid {server.pid} on {base}"
                except requests.RequestException:
                    pass
                time.sleep(1)
            raise AssertionError("superset did not answer /health within 180s")

        if not r.step("superset run (background)", start):
            return 1

        def login():
            j = check(s.post(base + "/api/v1/security/login", json={
                "username": "admin", "password": "admin", "provider": "db", "refresh": True}))
            s.headers["Authorization"] = "Bearer " + j["access_token"]
            j = check(s.get(base + "/api/v1/security/csrf_token/"))
            s.headers["X-CSRFToken"] = j["result"]
            s.headers["Referer"] = base
            return "JWT + csrf token"

        if not r.step("login (JWT)", login):
            return 1

        def test_connection():
            j = check(s.post(base + "/api/v1/database/test_connection/", json={
                "database_name": "nyala", "sqlalchemy_uri": pg_url,
                "configuration_method": "sqlalchemy_form"}))
            return j.get("message")

        r.step("test connection", test_connection)

        def add_db():
            resp = s.post(base + "/api/v1/database/", json={
                "database_name": "nyala", "sqlalchemy_uri": pg_url,
                "configuration_method": "sqlalchemy_form", "expose_in_sqllab": True})
            j = check(resp, 201)
            ctx["db"] = j["id"]
            return f"database id {j['id']}"

        if not r.step("add database", add_db):
            return 1
        db = ctx["db"]

        def schemas():
            j = check(s.get(f"{base}/api/v1/database/{db}/schemas/?q=(force:!t)"))
            if "public" not in j["result"]:
                raise AssertionError(f"'public' not in schemas {j['result']}")
            return j["result"]

        r.step("list schemas", schemas)

        def tables():
            q = urllib.parse.quote("(force:!t,schema_name:public)")
            j = check(s.get(f"{base}/api/v1/database/{db}/tables/?q={q}"))
            names = [t["value"] for t in j["result"]]
            if "traffic" not in names:
                raise AssertionError(f"'traffic' not in tables {names}")
            return names

        r.step("list tables", tables)

        def table_metadata():
            j = check(s.get(f"{base}/api/v1/database/{db}/table_metadata/"
                            "?name=traffic&schema=public"))
            cols = {c["name"]: c["type"] for c in j["columns"]}
            if set(cols) != {"uid", "lane", "ts", "speed", "count_c1"}:
                raise AssertionError(f"columns {cols}")
            return cols

        r.step("table metadata (SQL Lab schema browser)", table_metadata)

        def add_dataset():
            j = check(s.post(base + "/api/v1/dataset/", json={
                "database": db, "schema": "public", "table_name": "traffic"}), 201)
            ctx["ds"] = j["id"]
            j = check(s.get(f"{base}/api/v1/dataset/{ctx['ds']}"))
            cols = {c["column_name"]: (c["type"], c["is_dttm"]) for c in j["result"]["columns"]}
            if not cols.get("ts", (None, False))[1]:
                raise AssertionError(f"ts is not temporal: {cols}")
            return f"dataset id {ctx['ds']}, columns {cols}"

        if not r.step("add dataset traffic", add_dataset):
            return 1
        ds = ctx["ds"]

        metric = {"expressionType": "SIMPLE", "column": {"column_name": "speed"},
                  "aggregate": "AVG", "label": "AVG(speed)"}
        x_axis = {"columnType": "BASE_AXIS", "sqlExpression": "ts", "label": "ts",
                  "expressionType": "SQL", "timeGrain": "PT1H"}
        time_range = "2026-11-15 : 2026-11-16"

        def chart_payload(post_processing):
            return {
                "datasource": {"id": ds, "type": "table"},
                "force": True,
                "result_format": "json",
                "result_type": "full",
                "form_data": {"datasource": f"{ds}__table", "viz_type": "echarts_timeseries_line",
                              "x_axis": "ts", "time_grain_sqla": "PT1H", "metrics": [metric],
                              "groupby": ["uid"], "time_range": time_range},
                "queries": [{
                    "columns": [x_axis, "uid"],
                    "metrics": [metric],
                    "filters": [{"col": "ts", "op": "TEMPORAL_RANGE", "val": time_range}],
                    "extras": {"time_grain_sqla": "PT1H", "having": "", "where": ""},
                    "orderby": [[metric, False]],
                    "row_limit": 10000,
                    "series_columns": ["uid"],
                    "series_limit": 0,
                    "time_range": time_range,
                    "post_processing": post_processing,
                }],
            }

        def chart_data():
            j = check(s.post(base + "/api/v1/chart/data", json=chart_payload([])))
            res = j["result"][0]
            print("       chart SQL: " + " ".join(res.get("query", "").split()), flush=True)
            return compare_series(res["data"], expected, "AVG(speed)")

        r.step("chart data: AVG(speed) by ts PT1H, uid, 2026-11-15 : 2026-11-16", chart_data)

        def chart_data_pivot():
            pp = [{"operation": "pivot", "options": {
                      "index": ["ts"], "columns": ["uid"],
                      "aggregates": {"AVG(speed)": {"operator": "mean"}},
                      "drop_missing_columns": False}},
                  {"operation": "flatten"}]
            j = check(s.post(base + "/api/v1/chart/data", json=chart_payload(pp)))
            data = j["result"][0]["data"]
            flat = []
            for row in data:
                for uid in UIDS:
                    key = next((k for k in row if k != "ts" and k.endswith(str(uid))), None)
                    if key is None:
                        raise AssertionError(f"no series for uid {uid} in {list(row)}")
                    if row[key] is not None:
                        flat.append({"ts": row["ts"], "uid": uid, "v": row[key]})
            return compare_series(flat, expected, "v") + f" ({len(data)} hours pivoted)"

        r.step("chart data with echarts pivot/flatten post-processing", chart_data_pivot)

        def sqllab():
            sql = ("SELECT uid, count(*) AS n, avg(speed) AS avg_speed FROM traffic "
                   "WHERE ts >= '2026-11-15' AND ts < '2026-11-16' GROUP BY uid ORDER BY uid")
            j = check(s.post(base + "/api/v1/sqllab/execute/", json={
                "database_id": db, "sql": sql, "schema": "public", "runAsync": False,
                "client_id": "e2e" + os.urandom(3).hex(), "queryLimit": 1000, "tab": "e2e",
                "tmp_table_name": "", "select_as_cta": False, "ctas_method": "TABLE"}),
                200, 202)
            if j.get("status") != "success":
                raise AssertionError(f"status {j.get('status')}: {json.dumps(j)[:2000]}")
            print("       executed SQL: " + " ".join(j["query"].get("executedSql", "").split()),
                  flush=True)
            got = {int(row["uid"]): (row["n"], row["avg_speed"]) for row in j["data"]}
            want = {}
            for uid in UIDS:
                sp = [x[3] for x in rows if x[0] == uid and T0 <= x[2] < T1]
                want[uid] = (len(sp), sum(sp) / len(sp))
            for uid in UIDS:
                n, a = got.get(uid, (None, None))
                if n != want[uid][0] or a is None or abs(a - want[uid][1]) > 1e-6 * want[uid][1]:
                    raise AssertionError(f"SQL Lab got {got}, want {want}")
            return got

        r.step("SQL Lab execute", sqllab)
        return 1 if r.failed else 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(meta_dir, ignore_errors=True)
        n = sum(1 for _ in open(sql_log))
        print(f"{n} statements sent to Nyala logged in {sql_log}; Superset log {log_path}")
        print(f"{len(r.failed)} failed: {r.failed}" if r.failed else "all steps OK")


if __name__ == "__main__":
    sys.exit(main())
