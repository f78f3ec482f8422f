"""SQLAlchemy's inspector (as Superset and pandas use it) and pandas.read_sql."""

import datetime

import sqlalchemy as sa
import pytest


@pytest.fixture
def engine(pg):
    e = sa.create_engine(pg["url"])
    yield e
    e.dispose()


def create(engine, name):
    with engine.begin() as c:
        c.execute(sa.text(
            f"CREATE TABLE {name} (uid INT, lane SMALLINT NOT NULL, ts TIMESTAMP, "
            "speed REAL, note VARCHAR, PRIMARY KEY (uid, lane, ts))"
        ))
        c.execute(sa.text(
            f"INSERT INTO {name} VALUES (1, 1, '2026-11-15 08:00:00', 50.5, 'a'), "
            "(1, 2, '2026-11-15 09:00:00', NULL, NULL)"
        ))


def test_inspector_reflects_tables_columns_and_keys(engine, table_name):
    create(engine, table_name)
    insp = sa.inspect(engine)
    assert "public" in insp.get_schema_names()
    assert table_name in insp.get_table_names()
    assert table_name in insp.get_table_names(schema="public")
    assert insp.get_view_names() == []
    assert insp.has_table(table_name)
    assert not insp.has_table(table_name + "_missing")
    cols = {c["name"]: c for c in insp.get_columns(table_name)}
    assert list(cols) == ["uid", "lane", "ts", "speed", "note"]
    assert isinstance(cols["uid"]["type"], sa.Integer)
    assert isinstance(cols["lane"]["type"], sa.SmallInteger)
    assert isinstance(cols["ts"]["type"], sa.DateTime)
    assert isinstance(cols["speed"]["type"], sa.REAL)
    assert isinstance(cols["note"]["type"], sa.String)
    assert [cols[c]["nullable"] for c in cols] == [False, False, False, True, True]
    pk = insp.get_pk_constraint(table_name)
    assert pk["constrained_columns"] == ["uid", "lane", "ts"]
    assert insp.get_foreign_keys(table_name) == []
    assert insp.get_indexes(table_name) == []
    assert insp.get_unique_constraints(table_name) == []


def test_reflect_and_query_through_core(engine, table_name):
    create(engine, table_name)
    t = sa.Table(table_name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as c:
        rows = c.execute(sa.select(t.c.lane, t.c.speed).where(t.c.uid == 1).order_by(t.c.lane)).all()
    assert [tuple(r) for r in rows] == [(1, 50.5), (2, None)]


def test_pandas_read_sql(engine, table_name):
    pd = pytest.importorskip("pandas")
    create(engine, table_name)
    df = pd.read_sql(sa.text(f"SELECT lane, speed FROM {table_name} ORDER BY lane"), engine)
    assert df["lane"].tolist() == [1, 2]
    assert df["speed"].iloc[0] == 50.5
    df = pd.read_sql_table(table_name, engine)
    assert len(df) == 2
    assert df["ts"].iloc[0] == datetime.datetime(2026, 11, 15, 8)
