"""The application recorders of both backends under their original import path, which
environments name in ``APPLICATION_RECORDER_TOPIC``: the classes live in
:mod:`vmledger.audit.sqlite_recorder` and :mod:`vmledger.audit.postgres_recorder`, and
are re-exported here so that the topics written before they moved
(``vmledger.audit.recorders:AuditedSQLiteApplicationRecorder`` and
``...:AuditedPostgresApplicationRecorder``) still resolve to them.

:data:`SQLITE_RECORDER_TOPIC` and :data:`POSTGRES_RECORDER_TOPIC` are the topics
:mod:`vmledger.persistence` selects: the classes' own modules, as ``get_topic`` names them."""

from vmledger.audit.postgres_recorder import (
    POSTGRES_RECORDER_TOPIC,
    AuditedPostgresApplicationRecorder,
)
from vmledger.audit.sqlite_recorder import (
    SQLITE_RECORDER_TOPIC,
    AuditedSQLiteApplicationRecorder,
)

__all__ = ["POSTGRES_RECORDER_TOPIC", "SQLITE_RECORDER_TOPIC",
           "AuditedPostgresApplicationRecorder", "AuditedSQLiteApplicationRecorder"]
