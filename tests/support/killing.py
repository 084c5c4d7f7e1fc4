"""``vmledger serve`` that dies (SIGKILL, no clean-up) around the commit of one command:
the one sent with the ``Idempotency-Key`` :data:`KEY`.

``python -m tests.support.killing serve --db URL ...`` with :data:`WHEN_ENV` set to
``before-commit`` (the process dies as the command is about to be saved: nothing of it
is written) or ``after-commit`` (it dies once the save returned: the command is
committed, and the response is never sent). Every other request is served as usual.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

KEY = "die-around-the-commit"
WHEN_ENV = "VMLEDGER_TEST_KILL"
WHEN = ("before-commit", "after-commit")


def install(when: str) -> None:
    """Patch the command pipeline and the store so the keyed command kills the process
    ``when``."""
    from vmledger.domain.commands.pipeline import Pipeline
    from vmledger.domain.service import ServerService

    if when not in WHEN:
        raise ValueError(f"{WHEN_ENV} is one of {', '.join(WHEN)}, not {when!r}")
    marked = threading.local()
    execute = Pipeline.execute
    save = ServerService.save

    def execute_marked(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        key = kwargs.get("key")
        marked.on = key is not None and key.key == KEY
        try:
            return execute(self, *args, **kwargs)
        finally:
            marked.on = False

    def save_around(self: ServerService, *aggregates: Any, **kwargs: Any) -> Any:
        if getattr(marked, "on", False) and when == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        recordings = save(self, *aggregates, **kwargs)
        if getattr(marked, "on", False) and when == "after-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        return recordings

    Pipeline.execute = execute_marked  # type: ignore[method-assign]
    ServerService.save = save_around  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ[WHEN_ENV])
    from vmledger.cli import main

    sys.exit(main(sys.argv[1:]))
