"""psycopg 3: the extended protocol, server-side parameters, binary results, prepared
statements."""

import datetime

import pytest

psycopg = pytest.importorskip("psycopg")


def test_binary_parameters_and_prepared_statements(pg, table_name):
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table_name} (uid INT, ts TIMESTAMP, speed REAL, note TEXT, "
            "PRIMARY KEY (uid, ts))"
        )
        ts = datetime.datetime(2026, 11, 15, 8)
        with conn.cursor(binary=True) as cur:
            cur.executemany(
                f"INSERT INTO {table_name} VALUES (%s, %s, %s, %s)",
                [(i, ts, 50.0 + i, None if i % 2 else f"n{i}") for i in range(10)],
            )
            for i in range(10):
                cur.execute(
                    f"SELECT speed, note FROM {table_name} WHERE uid = %s AND ts = %s",
                    (i, ts),
                    prepare=True,
                )
                assert cur.fetchone() == (pytest.approx(50.0 + i), None if i % 2 else f"n{i}")
            cur.execute(f"SELECT count(*), min(ts) FROM {table_name} WHERE speed >= %s", (55.0,))
            assert cur.fetchone() == (5, ts)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"INSERT INTO {table_name} (uid, ts) VALUES (%s, %s)", (1, ts))
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM missing WHERE a = %s", (1,))
        cur = conn.execute(
            f"UPDATE {table_name} SET note = %s WHERE uid < %s", ("low", 3)
        )
        assert cur.rowcount == 3


def test_binary_results_of_expressions_over_parameters(pg, table_name):
    # The rows of `k + %s` arrive as the type the statement's Describe announced, whatever
    # type the client bound the value as: binary results are decoded by that type.
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, s SMALLINT, f REAL)")
        conn.execute(f"INSERT INTO {table_name} VALUES (1, 2, 1.5), (2, 3, 2.5)")
        for prepare in (False, True):
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    f"SELECT k + %s, s * %s, f + %s FROM {table_name} ORDER BY k",
                    (1, 2, 0.5),
                    prepare=prepare,
                )
                assert cur.fetchall() == [(2, 4, 2.0), (3, 6, 3.0)]
        # A result that does not fit the announced type is an error, not garbage.
        with conn.cursor(binary=True) as cur:
            with pytest.raises(psycopg.errors.NumericValueOutOfRange):
                cur.execute(f"SELECT k + %s FROM {table_name}", (10_000_000_000,))


def test_untyped_parameters_in_a_computed_on_conflict_update(pg, table_name):
    # psycopg sends Python strings untyped (OID 0), as asyncpg and pgx do with text: the
    # server types each from where it is used, also inside ON CONFLICT ... SET.
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, n BIGINT)")
        for _ in range(3):
            conn.execute(
                f"INSERT INTO {table_name} VALUES (%t, 1) "
                f"ON CONFLICT (k) DO UPDATE SET n = {table_name}.n + %t",
                ("1", "7"),
                prepare=True,
            )
        assert conn.execute(f"SELECT k, n FROM {table_name}").fetchall() == [(1, 15)]


def test_copy_rows(pg, table_name):
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, ts TIMESTAMP, note TEXT)")
        ts = datetime.datetime(2026, 11, 15, 8)
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table_name} (k, ts, note) FROM STDIN") as copy:
                for k in range(3000):
                    copy.write_row((k, ts, None if k % 3 else f"tab\there {k}"))
            assert cur.rowcount == 3000
            cur.execute(f"SELECT note FROM {table_name} WHERE k = 3")
            assert cur.fetchone() == ("tab\there 3",)
            with cur.copy(f"COPY (SELECT k, note FROM {table_name} WHERE k < 3 ORDER BY k) TO STDOUT") as copy:
                got = [row for row in copy.rows()]
            assert got == [("0", "tab\there 0"), ("1", None), ("2", None)]


def test_savepoints_recover_a_failed_block(pg, table_name):
    """psycopg's nested `transaction()` is a savepoint: a failure inside it rolls back to the
    savepoint and the outer block carries on (SQLAlchemy's first connection does this when it
    looks up the hstore type)."""
    with psycopg.connect(pg["dsn"]) as conn:
        conn.execute(f"CREATE TABLE {table_name} (k INT PRIMARY KEY, note TEXT)")
        conn.commit()
        conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (1, "a"))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(psycopg.errors.UndefinedTable):
            with conn.transaction():
                conn.execute("SELECT * FROM missing WHERE a = %s", (1,))
        # Back in the block, not failed: later statements run.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute(f"SELECT note FROM {table_name} WHERE k = %s", (1,)).fetchone() == ("a",)
        with conn.transaction():
            conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (2, "b"))
        assert psycopg.types.TypeInfo.fetch(conn, "hstore") is None
        conn.commit()
        assert conn.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (2,)
        conn.rollback()
        with pytest.raises(psycopg.errors.InvalidSavepointSpecification):
            conn.execute("RELEASE SAVEPOINT nowhere")
        conn.rollback()
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
            conn.execute("SAVEPOINT outside")
