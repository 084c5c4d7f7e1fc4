"""Benchmarks for vmledger's command path (``python -m benchmarks``).

:mod:`benchmarks.commands` measures durable commands per second of the command service
(:class:`vmledger.domain.service.ServerService`) against a raw-driver baseline doing the
equivalent SELECT + INSERT + COMMIT per command, on SQLite and PostgreSQL.
"""
