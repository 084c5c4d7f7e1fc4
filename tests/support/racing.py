"""Running calls at the same moment, to test what concurrent writers see."""

from __future__ import annotations

import threading
from collections.abc import Callable

from vmledger import VmledgerError


def racing(calls: list[Callable[[], object]]) -> list[str]:
    """Run the calls at once (a thread each, released together); their outcomes,
    sorted: "ok", the name of the refusal raised, or "BUG ..." for anything else."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[str] = []
    lock = threading.Lock()

    def go(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
            outcome = "ok"
        except VmledgerError as e:
            outcome = type(e).__name__
        except Exception as e:  # anything else is a bug
            outcome = f"BUG {e!r}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=go, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes)
