"""``pool="processes"``: jobs in spawned children that import the app module themselves."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from conveyor import ConfigurationError, JobCancelled, JobDead, JobStatus, TaskFailed
from conveyor.cli import cli
from conveyor.worker import Worker

TASKS = """
import asyncio, os, signal, time
from conveyor import Conveyor, current_job

app = Conveyor("memory://")
HOARD = []

@app.task
def pid() -> int:
    return os.getpid()

@app.task
def tally(path: str) -> int:
    with open(path, "a") as f:  # one short append per run: counts what really ran
        f.write(f"{os.getpid()}\\n")
    return os.getpid()

@app.task
def hoard(mib: int) -> int:
    HOARD.append(b"x" * (mib * 1024 * 1024))  # written, so resident; kept after the job
    return os.getpid()

@app.task
def linger() -> int:
    import threading  # a non-daemon thread: the interpreter cannot exit while it runs
    threading.Thread(target=time.sleep, args=(3600,)).start()
    return os.getpid()

@app.task
def stall_exit() -> int:
    import atexit  # an exit handler that never returns: only a kill ends the process
    atexit.register(time.sleep, 3600)
    return os.getpid()

@app.task
def sigkill(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
    os.kill(os.getpid(), signal.SIGKILL)

@app.task(retries=1, backoff=0.01)
def flaky() -> int:
    if current_job().attempt == 0:
        raise ValueError("first attempt fails")
    return current_job().attempt

@app.task
def report() -> str:
    current_job().progress(0.7, "in a child")
    time.sleep(0.5)
    return "reported"

@app.task(timeout=0.5)
def hang() -> None:
    time.sleep(60)  # a C call: only a hard limit stops it

@app.task
def sleepy() -> None:
    current_job().progress(0.0, str(os.getpid()))
    time.sleep(60)

@app.task
def crash() -> None:
    os._exit(9)

@app.task
async def coro(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1

def _note_pid(path: str, pid: int) -> None:
    with open(path, "a") as f:
        f.write(f"{pid}\\n")

@app.task(timeout=0.5)
def fork_then_hang(path: str) -> None:
    import multiprocessing  # a helper process forked from the child, as libraries do
    helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    helper.start()
    _note_pid(path, helper.pid)
    time.sleep(60)

@app.task
def fork_then_die(path: str) -> None:
    helper = os.fork()
    if helper == 0:  # it holds every descriptor the child held
        time.sleep(60)
        os._exit(0)
    _note_pid(path, helper)
    os.kill(os.getpid(), signal.SIGKILL)

@app.task
def fork_then_die_mid_message(path: str) -> None:
    import struct, sys
    helper = os.fork()
    if helper == 0:  # it holds every descriptor the child held
        time.sleep(60)
        os._exit(0)
    _note_pid(path, helper)
    # The start of a message to the worker (multiprocessing's 4-byte length, then part of
    # what it promises), as a child killed while it sends a big log record leaves it.
    os.write(int(sys.argv[1]), struct.pack("!i", 1_000_000) + b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)

@app.task
def exec_helper() -> int:
    import subprocess  # close_fds=False: every inheritable descriptor goes with it
    return subprocess.Popen(["sleep", "60"], close_fds=False).pid

@app.task
def stop_helpers() -> list[int | None]:
    import multiprocessing, subprocess
    exec_ed = subprocess.Popen(["sleep", "60"])
    time.sleep(0.2)
    exec_ed.terminate()
    try:
        codes: list[int | None] = [exec_ed.wait(5)]
    except subprocess.TimeoutExpired:
        exec_ed.kill()
        codes = [None]
    for sig in (signal.SIGTERM, signal.SIGINT):
        forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        forked.start()
        time.sleep(0.2)
        os.kill(forked.pid, sig)
        forked.join(5)
        codes.append(forked.exitcode)
        if forked.exitcode is None:
            forked.kill()
    return codes

@app.task
def progress_later(started: str, reported: str) -> None:
    import threading  # left running: it reports once the next job runs in this child
    job = current_job()
    def later() -> None:
        while not os.path.exists(started):
            time.sleep(0.02)
        job.progress(0.99, "from the job before")
        open(reported, "w").close()
    threading.Thread(target=later, daemon=True).start()

@app.task
def progress_next(started: str, reported: str) -> str:
    open(started, "w").close()
    while not os.path.exists(reported):
        time.sleep(0.02)
    time.sleep(0.3)  # the leftover thread's message reached the worker before this result
    return "next"
"""


@pytest.fixture(scope="module")
def tasks(write_module: Callable[[str, str], ModuleType]) -> ModuleType:
    return write_module("proc_tasks", TASKS)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a reaped child's pid is gone; ours are reaped on stop)."""
    return Path(f"/proc/{pid}").exists() if Path("/proc").exists() else _signal0(pid)


def _signal0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def pool(tasks: ModuleType, concurrency: int = 1, **options: float) -> Iterator[Worker]:
    worker = Worker(
        tasks.app, pool="processes", concurrency=concurrency, module="proc_tasks", **options
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(graceful=False)
        thread.join(15)
        assert not thread.is_alive()


def test_jobs_run_in_child_processes(tasks: ModuleType) -> None:
    jobs = [tasks.pid.delay() for _ in range(4)] + [tasks.coro.delay(41)]
    with pool(tasks, concurrency=2):
        pids = {j.result(timeout=30) for j in jobs[:4]}
        assert jobs[4].result(timeout=10) == 42
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert not any(alive(p) for p in pids)  # children end with the worker


def test_progress_travels_from_the_child(tasks: ModuleType) -> None:
    job = tasks.report.delay()
    with pool(tasks):
        deadline = time.monotonic() + 30
        while job.progress[0] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.progress == (0.7, "in a child")
        assert job.result(timeout=10) == "reported"


def test_hard_time_limit_kills_the_child_and_a_new_one_takes_over(tasks: ModuleType) -> None:
    hung = tasks.hang.delay()
    after = tasks.pid.delay()
    with pool(tasks):
        with pytest.raises(TaskFailed) as info:
            hung.result(timeout=30)
        assert after.result(timeout=30) > 0
    assert info.value.remote_type == "builtins.TimeoutError"
    assert "process running it was killed" in info.value.remote_message


def test_a_child_that_dies_mid_job_counts_a_delivery_not_a_failure(
    tasks: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILLed under its job (what the out-of-memory killer does): as if the worker had
    died. The job gets no outcome, comes back when its lease lapses, and is dead-lettered
    once delivered more than max_deliveries times; the jobs after it run."""
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    runs = tmp_path / "runs"
    killed = tasks.sigkill.delay(str(runs))
    after = tasks.pid.delay()
    with pool(tasks, lease=0.6, max_deliveries=2):
        assert after.result(timeout=30) > 0
        with pytest.raises(JobDead) as info:
            killed.result(timeout=30)
    assert info.value.reason.startswith("delivered 3 times without finishing")
    assert len(runs.read_text().split()) == 2  # each delivery ran once, in a fresh child
    assert "its process died (killed by SIGKILL) on delivery 1" in caplog.text
    assert "returns when its lease expires" in caplog.text


def test_a_child_exiting_mid_job_is_treated_the_same(tasks: ModuleType) -> None:
    crashed = tasks.crash.delay()  # os._exit(9)
    with pool(tasks, lease=0.6, max_deliveries=1), pytest.raises(JobDead) as info:
        crashed.result(timeout=30)
    assert info.value.reason.startswith("delivered 2 times without finishing")


def test_a_raising_job_in_a_child_follows_its_retry_policy(tasks: ModuleType) -> None:
    job = tasks.flaky.delay()
    with pool(tasks):
        assert job.result(timeout=30) == 1  # failed once, retried once, no delivery lost


def test_cancel_kills_the_child_running_the_job(tasks: ModuleType) -> None:
    job = tasks.sleepy.delay()
    with pool(tasks, lease=0.6):
        deadline = time.monotonic() + 30
        while job.status is not JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        job.cancel()
        with pytest.raises(JobCancelled):
            job.result(timeout=10)


def test_children_ignore_stop_signals_the_parent_decides(tasks: ModuleType) -> None:
    with pool(tasks):
        first = tasks.pid.delay().result(timeout=30)
        os.kill(first, signal.SIGTERM)  # Heroku signals the whole process group
        os.kill(first, signal.SIGINT)
        time.sleep(0.3)
        assert tasks.pid.delay().result(timeout=10) == first


def test_shutdown_hands_back_jobs_running_in_children(tasks: ModuleType) -> None:
    job = tasks.sleepy.delay()
    worker = Worker(tasks.app, pool="processes", concurrency=1, module="proc_tasks", grace=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while job.progress[1] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    running = int(job.progress[1] or 0)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert job.status is JobStatus.QUEUED
    assert not alive(running)
    tasks.app.broker.purge("default")


def _groups(values: list[int]) -> list[int]:
    """Lengths of the runs of equal consecutive values: [7, 7, 8] -> [2, 1]."""
    sizes: list[int] = []
    for i, v in enumerate(values):
        if i and v == values[i - 1]:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def test_a_child_is_recycled_after_max_jobs_per_child(
    tasks: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    runs = tmp_path / "runs"
    jobs = [tasks.tally.delay(str(runs)) for _ in range(10)]
    with pool(tasks, max_jobs_per_child=3):
        pids = [j.result(timeout=60) for j in jobs]
        retired = set(pids) - {pids[-1]}  # each exited before its replacement started
        assert not any(alive(p) for p in retired)
    # One slot, FIFO: each child runs three jobs, the fourth runs the last one.
    assert len(set(pids)) == 4 and _groups(pids) == [3, 3, 3, 1]
    assert [int(p) for p in runs.read_text().split()] == pids  # each job ran once
    assert caplog.text.count("(max_jobs_per_child=3)") == 3
    assert "recycling worker process" in caplog.text


def test_a_child_above_max_child_memory_after_a_job_is_recycled(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    fat = tasks.hoard.delay(60)  # keeps ~60 MB after it returns
    then = [tasks.pid.delay() for _ in range(2)]
    with pool(tasks, max_child_memory=50):
        hoarder = fat.result(timeout=60)
        fresh = [j.result(timeout=60) for j in then]
    assert fresh[0] != hoarder  # the next job got a new child
    assert fresh[1] == fresh[0]  # which is under the limit, so it stays
    assert "its resident memory is" in caplog.text
    assert "(max_child_memory=50 MiB); that was its first job" in caplog.text


def test_a_recycled_child_exits_without_waiting_for_threads_its_task_left(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    lingered = tasks.linger.delay()
    then = tasks.pid.delay()
    with pool(tasks, max_jobs_per_child=1):
        first = lingered.result(timeout=30)
        assert then.result(timeout=30) != first
        deadline = time.monotonic() + 5  # well before RETIRE_PATIENCE would kill it
        while alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(first)
    assert "1 thread(s) that tasks started are still running: 'Thread-" in caplog.text
    assert f"worker process {first} exits without waiting for them" in caplog.text
    assert "did not exit within" not in caplog.text


def test_a_recycled_child_that_does_not_exit_is_killed(
    tasks: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("conveyor.worker._processes.RETIRE_PATIENCE", 0.5)
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    stuck = tasks.stall_exit.delay()
    then = tasks.pid.delay()
    with pool(tasks, max_jobs_per_child=1):
        first = stuck.result(timeout=30)
        assert then.result(timeout=30) != first  # the pool did not shrink to nothing
        assert not alive(first)
    assert f"worker process {first} did not exit within 0.5 s of being recycled" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_jobs_per_child": 0}, "max_jobs_per_child must be a positive whole number"),
        ({"max_jobs_per_child": "3"}, "max_jobs_per_child must be a positive whole number"),
        ({"max_jobs_per_child": True}, "max_jobs_per_child must be a positive whole number"),
        ({"max_child_memory": -5}, "max_child_memory must be a positive whole number of MiB"),
        ({"max_child_memory": 1.5}, "max_child_memory must be a positive whole number of MiB"),
        ({"max_jobs_per_child": 3, "pool": "threads"}, "add --pool processes"),
        ({"max_child_memory": 256, "pool": "async"}, "add --pool processes"),
    ],
)
def test_recycling_options_are_checked(
    tasks: ModuleType, options: dict[str, object], message: str
) -> None:
    kwargs: dict[str, object] = {"pool": "processes", "module": "proc_tasks", **options}
    with pytest.raises(ConfigurationError, match=message):
        Worker(tasks.app, **kwargs)  # type: ignore[arg-type]


def test_the_cli_options_reach_the_worker(
    tasks: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Worker] = []

    def run(self: Worker) -> None:  # the options are what is tested, not a run
        seen.append(self)

    monkeypatch.setattr(Worker, "run", run)
    args = ["worker", "proc_tasks", "--pool", "processes"]
    result = CliRunner().invoke(
        cli, [*args, "--max-jobs-per-child", "100", "--max-child-memory", "512"]
    )
    assert result.exit_code == 0, result.output
    (w,) = seen
    assert (w.max_jobs_per_child, w.max_child_memory) == (100, 512)
    result = CliRunner().invoke(cli, [*args])
    assert result.exit_code == 0, result.output
    assert (seen[1].max_jobs_per_child, seen[1].max_child_memory) == (None, None)
    result = CliRunner().invoke(cli, [*args, "--max-jobs-per-child", "0"])
    assert result.exit_code == 2 and "--max-jobs-per-child" in result.output
    result = CliRunner().invoke(cli, ["worker", "proc_tasks", "--max-child-memory", "512"])
    assert isinstance(result.exception, ConfigurationError)  # `conveyor` prints it, exit 1
    assert "add --pool processes" in str(result.exception)


def _kill_noted(path: Path) -> None:
    """End the helper processes a task noted in ``path``: they outlive its child."""
    for pid in path.read_text().split() if path.exists() else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def test_a_time_limit_is_kept_though_the_job_forked_a_process_that_lives_on(
    tasks: ModuleType, tmp_path: Path
) -> None:
    """The forked helper holds the child's end of the job socket, so that socket never
    closes: the worker sees the killed child end all the same, and its slot comes back."""
    helpers = tmp_path / "helpers"
    hung = tasks.fork_then_hang.delay(str(helpers))
    after = tasks.pid.delay()
    try:
        with pool(tasks):
            with pytest.raises(TaskFailed) as info:
                hung.result(timeout=15)
            assert after.result(timeout=30) > 0
    finally:
        _kill_noted(helpers)
    assert info.value.remote_type == "builtins.TimeoutError"


def test_a_child_dying_mid_job_is_seen_though_a_process_it_forked_lives_on(
    tasks: ModuleType, tmp_path: Path
) -> None:
    helpers = tmp_path / "helpers"
    killed = tasks.fork_then_die.delay(str(helpers))
    after = tasks.pid.delay()
    try:
        with pool(tasks, lease=0.6, max_deliveries=1):
            assert after.result(timeout=15) > 0
            with pytest.raises(JobDead) as info:
                killed.result(timeout=15)
    finally:
        _kill_noted(helpers)
    assert info.value.reason.startswith("delivered 2 times without finishing")
    assert len(helpers.read_text().split()) == 1  # the second delivery was the one too many


def test_a_child_killed_mid_message_is_seen_though_a_process_it_forked_lives_on(
    tasks: ModuleType, tmp_path: Path
) -> None:
    # The worker's reader waited for the rest of the message for ever: the forked helper
    # holds the socket, so no end of file came, and the job and the slot were stuck.
    helpers = tmp_path / "helpers"
    killed = tasks.fork_then_die_mid_message.delay(str(helpers))
    after = tasks.pid.delay()
    try:
        with pool(tasks, lease=0.6, max_deliveries=1):
            assert after.result(timeout=20) > 0
            with pytest.raises(JobDead):
                killed.result(timeout=20)
    finally:
        _kill_noted(helpers)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc/<pid>/fd")
def test_a_program_a_job_starts_does_not_hold_the_job_socket(tasks: ModuleType) -> None:
    with pool(tasks):
        helper = tasks.exec_helper.delay().result(timeout=30)
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{helper}/fd").iterdir()]
    finally:
        os.kill(helper, signal.SIGKILL)
    assert not [link for link in links if link.startswith("socket:")], links


def test_processes_a_job_starts_stop_on_sigterm_and_sigint(tasks: ModuleType) -> None:
    """A child does not act on the stop signals (``test_children_ignore_stop_signals...``),
    but what its job starts, exec'd or forked, does: ``terminate()`` ends it, and SIGINT
    raises KeyboardInterrupt in a forked Python."""
    with pool(tasks):
        codes = tasks.stop_helpers.delay().result(timeout=30)
    assert codes == [-signal.SIGTERM, -signal.SIGTERM, 1]


def test_progress_from_a_thread_the_job_before_left_is_not_the_next_jobs(
    tasks: ModuleType, tmp_path: Path
) -> None:
    started, reported = str(tmp_path / "started"), str(tmp_path / "reported")
    before = tasks.progress_later.delay(started, reported)
    after = tasks.progress_next.delay(started, reported)  # same child: one slot
    with pool(tasks):
        assert after.result(timeout=30) == "next"
    assert before.status is JobStatus.SUCCEEDED
    assert after.progress == (None, None)


SLOW_IMPORT = """
import os, sys, time
from conveyor import Conveyor

app = Conveyor("memory://")

if sys.argv[0].endswith("_child.py"):  # only a pool process's import takes a minute
    with open({pids!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    time.sleep(60)
"""


def test_a_stop_while_the_children_import_the_app_kills_them_and_ends_the_run(
    write_module: Callable[[str, str], ModuleType], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    slow = write_module("proc_slow", SLOW_IMPORT.format(pids=str(pids)))
    worker = Worker(slow.app, pool="processes", concurrency=2, module="proc_slow")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_noted(pids)) < 2:
            time.sleep(0.05)
        assert len(_noted(pids)) == 2
        began = time.monotonic()
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()
        assert time.monotonic() - began < 5
        assert not any(alive(pid) for pid in _noted(pids))
    finally:
        _kill_noted(pids)
        thread.join(10)


def _noted(path: Path) -> list[int]:
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []
