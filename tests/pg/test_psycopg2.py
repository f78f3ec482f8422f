"""psycopg2 (libpq, simple protocol with client-side parameters), as Superset uses it."""

import datetime
import decimal
import threading
import time

import psycopg2
import psycopg2.errors
import pytest


def connect(pg):
    return psycopg2.connect(pg["dsn"])


def test_ddl_dml_types_and_nulls(pg, table_name):
    conn = connect(pg)
    assert conn.server_version >= 160000
    cur = conn.cursor()
    cur.execute(
        f"""CREATE TABLE {table_name} (
            uid INTEGER, lane SMALLINT, ts TIMESTAMP, day DATE,
            speed REAL, ratio DOUBLE PRECISION, big BIGINT, price DECIMAL(10, 2),
            ok BOOLEAN, note TEXT, raw BYTEA,
            PRIMARY KEY (uid, lane, ts))"""
    )
    row = (
        1, 2, datetime.datetime(2026, 11, 15, 8, 30, 0, 123456), datetime.date(2026, 11, 15),
        52.5, 0.25, 2**40, decimal.Decimal("12.34"), True, "o'neil; -- x", psycopg2.Binary(b"\x00\xff"),
    )
    cur.execute(f"INSERT INTO {table_name} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    assert cur.rowcount == 1
    cur.executemany(
        f"INSERT INTO {table_name} (uid, lane, ts) VALUES (%s, %s, %s)",
        [(1, 3, datetime.datetime(2026, 11, 15, 9)), (2, 1, datetime.datetime(2026, 11, 15, 9))],
    )
    conn.commit()
    cur.execute(f"SELECT * FROM {table_name} WHERE uid = %s AND lane = %s AND ts = %s", row[:3])
    got = cur.fetchone()
    assert got[:4] == row[:4]
    assert got[4] == pytest.approx(52.5) and got[5] == 0.25 and got[6] == 2**40
    assert got[7] == decimal.Decimal("12.34")
    assert got[8] is True and got[9] == "o'neil; -- x" and bytes(got[10]) == b"\x00\xff"
    cur.execute(f"SELECT speed, note, raw FROM {table_name} WHERE lane = 3")
    assert cur.fetchone() == (None, None, None)
    assert [d.name for d in cur.description] == ["speed", "note", "raw"]

    cur.execute(f"UPDATE {table_name} SET speed = speed + 1 WHERE uid = 1")
    assert cur.rowcount == 2
    cur.execute(
        f"INSERT INTO {table_name} (uid, lane, ts, speed) VALUES (1, 2, %s, 99) "
        "ON CONFLICT (uid, lane, ts) DO UPDATE SET speed = EXCLUDED.speed",
        (row[2],),
    )
    cur.execute(f"SELECT speed FROM {table_name} WHERE uid = 1 AND lane = 2")
    assert cur.fetchone() == (99.0,)
    cur.execute(f"DELETE FROM {table_name} WHERE uid = 2")
    assert cur.rowcount == 1
    conn.commit()
    conn.close()


def test_errors_carry_sqlstate(pg, table_name):
    conn = connect(pg)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, v TEXT)")
    cur.execute(f"INSERT INTO {table_name} VALUES (1, 'a')")
    with pytest.raises(psycopg2.errors.UniqueViolation) as e:
        cur.execute(f"INSERT INTO {table_name} VALUES (1, 'b')")
    assert e.value.pgcode == "23505"
    with pytest.raises(psycopg2.errors.UndefinedTable):
        cur.execute("SELECT * FROM no_such_table")
    with pytest.raises(psycopg2.errors.UndefinedColumn):
        cur.execute(f"SELECT nope FROM {table_name}")
    with pytest.raises(psycopg2.errors.SyntaxError):
        cur.execute("SELEKT 1")
    cur.execute(f"SELECT v FROM {table_name}")
    assert cur.fetchall() == [("a",)]


def test_failed_transaction_until_rollback(pg, table_name):
    conn = connect(pg)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    with pytest.raises(psycopg2.errors.UndefinedTable):
        cur.execute("SELECT * FROM no_such_table")
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
        cur.execute("SELECT 1")
    conn.rollback()
    cur.execute("SELECT 2")
    assert cur.fetchone() == (2,)


def test_cancel(pg):
    conn = connect(pg)
    conn.autocommit = True
    cur = conn.cursor()
    threading.Timer(0.5, conn.cancel).start()
    started = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        cur.execute("SELECT count(*) FROM generate_series(1, 20000000000)")
    assert time.monotonic() - started < 20
    cur.execute("SELECT 3")
    assert cur.fetchone() == (3,)


def test_copy_in_and_out(pg, table_name):
    import io

    conn = connect(pg)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, name TEXT, speed REAL)")
    rows = "".join(f"{k},name {k},{k / 2}\n" for k in range(5000)) + "5000,,\n"
    cur.copy_expert(f"COPY {table_name} FROM STDIN WITH (FORMAT csv)", io.StringIO(rows))
    assert cur.rowcount == 5001
    cur.execute(f"SELECT count(*), count(name), sum(k) FROM {table_name}")
    assert cur.fetchone() == (5001, 5000, sum(range(5001)))
    # A bad row fails the whole COPY.
    with pytest.raises(psycopg2.errors.UniqueViolation):
        cur.copy_expert(f"COPY {table_name} FROM STDIN WITH (FORMAT csv)", io.StringIO("6000,a,1\n1,b,2\n"))
    cur.execute(f"SELECT count(*) FROM {table_name} WHERE k = 6000")
    assert cur.fetchone() == (0,)
    out = io.StringIO()
    cur.copy_expert(
        f"COPY (SELECT k, name FROM {table_name} WHERE k IN (1, 5000) ORDER BY k) TO STDOUT WITH CSV HEADER",
        out,
    )
    assert out.getvalue() == "k,name\n1,name 1\n5000,\n"


def test_savepoints_over_the_simple_protocol(pg, table_name):
    """SAVEPOINT, ROLLBACK TO and RELEASE as psycopg2 sends them (simple queries): a return to
    a savepoint ends the block's failed state."""
    conn = psycopg2.connect(pg["dsn"])
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, note TEXT)")
        conn.commit()
        cur.execute(f"INSERT INTO {table_name} VALUES (1, 'a')")
        cur.execute("SAVEPOINT before_typo")
        with pytest.raises(psycopg2.errors.SyntaxError):
            cur.execute("SELEC 1")
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("SELECT 1")
        cur.execute("ROLLBACK TO SAVEPOINT before_typo")
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        cur.execute(f"SELECT note FROM {table_name} WHERE k = 1")
        assert cur.fetchone() == ("a",)
        cur.execute("RELEASE SAVEPOINT before_typo")
        with pytest.raises(psycopg2.errors.InvalidSavepointSpecification):
            cur.execute("ROLLBACK TO SAVEPOINT before_typo")
        conn.rollback()
        # A recovery and the block's end in one query string: the connection is idle after
        # it, and stays so (a savepoint outside a block is refused).
        cur.execute("SAVEPOINT again")
        with pytest.raises(psycopg2.errors.UndefinedTable):
            cur.execute("SELECT * FROM missing")
        cur.execute("ROLLBACK TO SAVEPOINT again; COMMIT")
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        conn.rollback()  # psycopg2's own idea of the block
        conn.autocommit = True
        with pytest.raises(psycopg2.errors.NoActiveSqlTransaction):
            cur.execute("SELECT 1; SAVEPOINT outside")
        cur.execute("SELECT 1")
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        conn.close()
