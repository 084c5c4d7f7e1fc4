"""The API's worker threads: its blocking engine calls run off the event loop, handed over
with no more than a hand-over needs.

``loop.run_in_executor`` with a :class:`~concurrent.futures.ThreadPoolExecutor` costs
about a quarter of the API's own instructions for an action request: a
``concurrent.futures.Future`` with its condition variable, the executor's idle-thread
semaphore (a Python-level condition, taken twice a call), and the asyncio future chained
to the concurrent one through callbacks that copy its state. :class:`WorkerThreads`
queues the call with the event loop's own future, and the worker thread hands the
result to the loop with one ``call_soon_threadsafe``: the same semantics (the caller's
context copied, at most :data:`WORKER_THREADS` threads started as calls need them, a
call whose caller was cancelled before it started is not run), less work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

#: the API's worker threads for blocking engine calls: as many as anyio's default
#: limiter allows (concurrent commands share commits on PostgreSQL, so fewer cost more)
WORKER_THREADS = 40

#: a queued call: the loop and future to answer, the context to run in, the call
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context,
             Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _deliver(future: asyncio.Future[Any], result: Any) -> None:
    if not future.cancelled():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)


class WorkerThreads:
    """Up to ``limit`` threads taking calls from one queue; a thread is started when a
    call arrives and none is idle (as ``ThreadPoolExecutor`` does)."""

    def __init__(self, limit: int = WORKER_THREADS, name: str = "vmledger-api") -> None:
        self.limit = limit
        self.name = name
        self._queue: SimpleQueue[_Job] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a call no other call has claimed
        self._started = 0

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                start = False
            else:
                start = self._started < self.limit
                if start:
                    self._started += 1
                    number = self._started
        self._queue.put(job)
        if start:
            # daemon: a thread idles on the queue for the process's life, and one still
            # in a call at exit is no different from a process killed (the command's
            # caller, which alone would be told its result, is gone)
            threading.Thread(target=self._work, name=f"{self.name}_{number}",
                             daemon=True).start()

    def _work(self) -> None:
        queue, lock = self._queue, self._lock
        while True:
            loop, future, context, func, args, kwargs = queue.get()
            if not future.cancelled():  # a call whose caller left before it started
                try:
                    result = context.run(func, *args, **kwargs)
                except BaseException as exc:  # handed to the caller, as an executor does
                    if isinstance(exc, StopIteration):  # a future cannot hold one
                        exc = RuntimeError(f"StopIteration raised in {func!r}")
                    _answer(loop, _fail, future, exc)
                else:
                    _answer(loop, _deliver, future, result)
            # drop the references before waiting (the result may be large)
            del loop, future, context, func, args, kwargs
            with lock:
                self._idle += 1


def _answer(loop: asyncio.AbstractEventLoop,
            how: Callable[[asyncio.Future[Any], Any], None],
            future: asyncio.Future[Any], value: Any) -> None:
    # a loop closed meanwhile (RuntimeError) has nobody waiting for the answer
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(how, future, value)


_threads: WorkerThreads | None = None
_threads_lock = threading.Lock()


def worker_threads() -> WorkerThreads:
    """The process's API worker threads (started as calls need them)."""
    global _threads
    if _threads is None:
        with _threads_lock:
            if _threads is None:
                _threads = WorkerThreads()
    return _threads


async def in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` in a worker thread, in a copy of this task's context
    (the request id of the log records, the pinned read-model layout), as
    ``starlette.concurrency.run_in_threadpool`` does, without anyio's capacity limiter
    and cancel scope (an extra turn of the event loop, some 10-20 µs a call: the API's
    calls are never cancelled mid-way) nor an executor's futures (see the module)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    worker_threads().submit((loop, future, contextvars.copy_context(), func, args, kwargs))
    return await future
