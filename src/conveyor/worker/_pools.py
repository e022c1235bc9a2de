"""Where a job runs, by pool mode and task kind.

=========== ============================== ==========================================
pool        sync tasks                     ``async def`` tasks
=========== ============================== ==========================================
threads     ``concurrency`` threads        one event loop thread (started on first use)
async       a few threads (<= 32)          one event loop thread: ``concurrency``
                                           coroutines at once, so it can be large
processes   ``concurrency`` child processes, one job each; async tasks run in the child
            under ``asyncio.run``
=========== ============================== ==========================================

Time limits are soft with threads and the event loop (``SoftTimeLimit`` or a cancellation
raised in the task) and hard with processes (the child is killed and replaced).

Only the processes pool has children to recycle (``max_jobs_per_child``,
``max_child_memory``) and a job whose process can die under it (``abandon``: the job is let
go as if the worker had died; see ``_processes``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .._backoff import Backoff
from .._errors import ConfigurationError
from ..middleware import WorkerProcess
from ._attempt import Attempt, Results
from ._loop import LoopRunner
from ._threads import Abandon, Done, Report, ThreadRunner

POOLS = ("threads", "processes", "async")
ASYNC_POOL_THREADS = 32


class Runner(Protocol):
    def start(self) -> None: ...
    def submit(self, attempt: Attempt) -> None: ...
    def interrupt(self, attempt: Attempt, why: str) -> None: ...
    def shutdown(self) -> None: ...


class Executor:
    def __init__(
        self,
        pool: str,
        concurrency: int,
        results: Results,
        done: Done,
        report: Report,
        *,
        spec: str | None,
        trusted: frozenset[str],
        backoff: Backoff,
        halted: Callable[[], bool],
        abandon: Abandon,
        max_jobs_per_child: int | None = None,
        max_child_memory: int | None = None,
        worker: WorkerProcess | None = None,
        arm: Callable[[Attempt], None] | None = None,
    ) -> None:
        """``arm(attempt)`` starts a job's time limit where the pool does (``arms``)."""
        if pool not in POOLS:
            raise ConfigurationError(f"unknown pool {pool!r}: use threads, processes or async")
        self.pool = pool
        self._arm = arm
        self._procs: Runner | None = None
        self._threads: Runner | None = None
        self._loop: LoopRunner | None = None
        if pool == "processes":
            if not spec:
                raise ConfigurationError(
                    "the processes pool needs the app's module, so each child can import it: "
                    "Worker(app, pool='processes', module='myapp.tasks')"
                )
            from ._processes import MiB, ProcessRunner

            self._procs = ProcessRunner(
                concurrency,
                spec,
                trusted,
                done=done,
                report=report,
                abandon=abandon,
                backoff=backoff,
                halted=halted,
                max_jobs=max_jobs_per_child,
                max_memory=None if max_child_memory is None else max_child_memory * MiB,
                worker=worker,
            )
        else:
            size = concurrency if pool == "threads" else min(concurrency, ASYNC_POOL_THREADS)
            # The async pool's sync jobs may wait for one of its few threads.
            waits = arm if pool == "async" else None
            self._threads = ThreadRunner(size, results, done, report, waits)
            self._loop = LoopRunner(results, done, report)

    def _runner(self, attempt: Attempt) -> Runner:
        if self._procs is not None:
            return self._procs
        assert self._threads is not None and self._loop is not None
        return self._loop if attempt.is_async else self._threads

    def start(self) -> None:
        for runner in (self._procs, self._threads):
            if runner is not None:
                runner.start()
        if self.pool == "async" and self._loop is not None:
            self._loop.start()

    def arms(self, attempt: Attempt) -> bool:
        """Whether the pool starts the job's time limit (``arm``) once it has a child or a
        thread for it, rather than the consumer as it hands the job over: a job may wait
        for one (a replaced child still importing the app; the async pool's threads), and
        that wait is not its run."""
        if self._arm is None:
            return False
        return self.pool == "processes" or (self.pool == "async" and not attempt.is_async)

    def submit(self, attempt: Attempt) -> None:
        # _runner's choice, inline: every job comes this way.
        if self._procs is not None:
            self._procs.submit(attempt)  # returns once a child has the job
            if self._arm is not None:
                self._arm(attempt)  # one that ended already is left be (Deadlines)
            return
        assert self._threads is not None and self._loop is not None
        (self._loop if attempt.is_async else self._threads).submit(attempt)

    def interrupt(self, attempt: Attempt, why: str) -> None:
        self._runner(attempt).interrupt(attempt, why)

    def shutdown(self) -> None:
        for runner in (self._procs, self._threads, self._loop):
            if runner is not None:
                runner.shutdown()


def check_recycling(
    pool: str, max_jobs_per_child: int | None, max_child_memory: int | None
) -> None:
    """``ConfigurationError`` for recycling options that are invalid or would do nothing."""
    if max_jobs_per_child is None and max_child_memory is None:
        return
    from ._processes import check_recycling as check_limits

    check_limits(max_jobs_per_child, max_child_memory)
    if pool != "processes":
        raise ConfigurationError(
            "max_jobs_per_child and max_child_memory recycle child processes, which only "
            f"the processes pool has (this worker uses {pool!r}): add --pool processes, or "
            "drop the option"
        )
