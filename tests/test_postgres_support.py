"""The throwaway PostgreSQL cluster used by the persistence tests."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.postgres


def test_select_one(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row == (1,)


def test_cluster_listens_on_loopback_tcp(postgres_cluster: PostgresCluster) -> None:
    assert (
        postgres_cluster.url == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    )
    with psycopg.connect(postgres_cluster.url) as conn:
        row = conn.execute(
            "SELECT inet_server_addr()::text, current_setting('max_connections'),"
            " current_setting('server_encoding')"
        ).fetchone()
    assert row == ("127.0.0.1/32", "200", "UTF8")


def test_databases_are_isolated(postgres_cluster: PostgresCluster) -> None:
    url_a = postgres_cluster.create_database("isolation_a")
    url_b = postgres_cluster.create_database("isolation_b")
    try:
        with psycopg.connect(url_a, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_a (value int)")
            conn.execute("INSERT INTO only_in_a VALUES (42)")
        with psycopg.connect(url_b) as conn:
            row = conn.execute("SELECT to_regclass('only_in_a') IS NULL").fetchone()
            assert row == (True,)
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT value FROM only_in_a")
        with psycopg.connect(url_a) as conn:
            assert conn.execute("SELECT value FROM only_in_a").fetchall() == [(42,)]
    finally:
        postgres_cluster.drop_database("isolation_a")
        postgres_cluster.drop_database("isolation_b")


def test_env_matches_eventsourcing_postgres(postgres_cluster: PostgresCluster) -> None:
    from eventsourcing.postgres import PostgresFactory

    env = postgres_cluster.env("eventsourcing_env")
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    url = postgres_cluster.create_database("eventsourcing_env")
    try:
        factory = PostgresFactory(env)
        try:
            factory.aggregate_recorder()  # connects and creates its table (CREATE_TABLE)
        finally:
            factory.close()
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
        assert tables is not None and tables[0] >= 1
    finally:
        postgres_cluster.drop_database("eventsourcing_env")
