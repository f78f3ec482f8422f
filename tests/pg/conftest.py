"""Fixtures for the PostgreSQL client tests: the server address comes from the Rust test
that started `nyala serve` (tests/pg_clients.rs) through NYALA_PG_HOST / NYALA_PG_PORT."""

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def pg():
    host = os.environ["NYALA_PG_HOST"]
    port = int(os.environ["NYALA_PG_PORT"])
    return {
        "host": host,
        "port": port,
        "dsn": f"host={host} port={port} user=nyala password=pw dbname=nyala",
        "url": f"postgresql://nyala:pw@{host}:{port}/nyala",
    }


@pytest.fixture
def table_name():
    """A fresh table name per test, so tests never see each other's rows."""
    return "t_" + uuid.uuid4().hex[:10]
