"""Faults done to ``conveyor worker`` processes, on SQLite and on a private Redis.

* A job running 5x its lease (renewed from a thread) runs once, beside an idle worker.
* A zombie worker (SIGSTOPped past its lease, then SIGCONTed): another worker takes the job
  over, and the zombie's late result is refused.
* A job that SIGKILLs its own worker every time: dead-lettered after ``--max-deliveries``,
  and the worker that survives it does not spin; with ``--pool processes`` only the child
  dies, which counts as a delivery exactly the same (the job is dead-lettered after
  ``--max-deliveries``, one lease apart), and the worker needs no restart.
* SIGTERM with three short jobs and one long one in flight: the short ones finish, the long
  one is handed back and redelivered at once, exit 0 within the grace.
* The Heroku sequence: TERM to the whole process group of a ``--pool processes`` worker, a
  second TERM, then KILL: nothing is lost. Twice: compressed (second TERM at 0.5 s, KILL at
  10 s, half the grace: the second TERM stops at once), and in real time (KILL 30 s after
  the first TERM, graces below 30 s: the grace and the second TERM each hand back what
  still runs before the KILL comes; ~20 s: the test ends once both process groups are
  empty, which they must be by the KILL).

Runs are counted from the log the tasks write (``workers.py``) and checked by ``checker``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers import params
from conveyor import JobDead, JobStatus
from conveyor.testing.checker import check

from .workers import Cluster, send, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=params(shared=True, workers=True))
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    target = request.param.target(request, tmp_path / "app", "fresh")
    c = Cluster(tmp_path / "app", target.url, target.prefix, store=target.store)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.mark.timeout(60)
def test_a_job_five_times_longer_than_its_lease_runs_once_beside_an_idle_worker(
    cluster: Cluster,
) -> None:
    app = cluster.app()
    a = cluster.worker("A", "--lease", "1")
    job = send(app, "sleepy", "long", 5.0)
    wait_for(lambda: cluster.started("long") == ["A"], 30, cluster.outputs)
    b = cluster.worker("B", "--lease", "1")  # idle, fetching: it would take a lapsed lease
    assert job.result(timeout=30) == "A", cluster.outputs()
    time.sleep(1.5)  # one more lease: a wrongful reclaim would have started by now
    assert cluster.started("long") == ["A"], cluster.outputs()
    assert a.alive() and b.alive()
    check(acknowledged=["long"], executed=cluster.executed(), completed=["long"]).assert_ok()
    app.close()


@pytest.mark.timeout(60)
def test_a_zombie_workers_late_result_is_refused(cluster: Cluster) -> None:
    app = cluster.app()
    a = cluster.worker("A", "--lease", "1")
    job = send(app, "sleepy", "z", 3.0)
    wait_for(lambda: cluster.started("z") == ["A"], 30, cluster.outputs)
    a.signal(signal.SIGSTOP)  # its renewal thread stops too: the lease runs out
    try:
        b = cluster.worker("B", "--lease", "1")
        wait_for(lambda: cluster.started("z") == ["A", "B"], 20, cluster.outputs)
    finally:
        a.signal(signal.SIGCONT)  # its 3 s sleep is over: it tries to finish at once
    wait_for(lambda: ("end", "z", "A", a.pid) in cluster.runs(), 10, cluster.outputs)
    assert job.result(timeout=20) == "B", cluster.outputs()
    time.sleep(0.5)
    assert job.result(timeout=30) == "B"  # A's late write did not land after B's either
    assert a.alive() and b.alive()
    report = check(acknowledged=["z"], executed=cluster.executed(), completed=["z"])
    report.assert_ok(max_duplicates=1)  # one stop past the lease: one rerun
    assert report.duplicate_runs == 1
    app.close()


@pytest.mark.timeout(90)
def test_a_job_that_kills_its_worker_every_time_is_dead_lettered_without_a_hot_loop(
    cluster: Cluster,
) -> None:
    app = cluster.app()
    args = ("--lease", "1", "--max-deliveries", "3")
    job = send(app, "suicide", "poison")
    restarts = 0
    worker = cluster.worker(f"w{restarts}", *args)
    deadline = time.monotonic() + 60
    while not job.done():  # restart the worker each time the job kills it
        assert time.monotonic() < deadline, cluster.outputs()
        if not worker.alive():
            restarts += 1
            worker = cluster.worker(f"w{restarts}", *args)
        time.sleep(0.05)
    with pytest.raises(JobDead) as info:
        job.result(timeout=30)
    assert info.value.reason.startswith("delivered 4 times without finishing"), info.value
    assert len(cluster.started("poison")) == 3
    assert restarts == 3

    # The last worker survives it, and idles without spinning.
    survivor = worker
    assert survivor.alive()
    before = survivor.cpu_seconds()
    time.sleep(2.0)
    used = survivor.cpu_seconds() - before
    assert used < 0.5, f"the worker spun: {used:.2f} s of CPU in 2 s"
    # ...and goes on with other work. (These come after the poison: with the thread pool,
    # jobs running beside it die with the process and count deliveries too.)
    ok = {f"ok{i}": send(app, "sleepy", f"ok{i}", 0.0) for i in range(5)}
    assert {t: j.result(timeout=20) for t, j in ok.items()} == dict.fromkeys(ok, survivor.name)
    report = check(
        acknowledged=[*ok, "poison"], executed=cluster.executed(), completed=[*ok, "poison"]
    )  # dead-lettered is an end too
    report.assert_ok(max_duplicates=2)  # the poison's 2 reruns, and no other
    assert report.duplicated == {"poison": 2}
    app.close()


@pytest.mark.timeout(60)
def test_sigterm_finishes_short_jobs_and_hands_the_long_one_back_at_once(
    cluster: Cluster,
) -> None:
    app = cluster.app()
    a = cluster.worker("A", "--grace", "2", "--lease", "30", "-c", "4")
    short = {f"s{i}": send(app, "sleepy", f"s{i}", 1.0) for i in range(3)}
    long = send(app, "sleepy", "long", 12.0)
    tags = [*short, "long"]
    wait_for(lambda: all(cluster.started(t) == ["A"] for t in tags), 30, cluster.outputs)
    # B waits idle; with a 30 s lease, only a hand-back can bring it the long job soon. It
    # comes up while A stops, so the long job's margin over the grace is not spent on that.
    b = cluster.worker("B", "--lease", "30", "-c", "4", ready=False)

    began = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    took = time.monotonic() - began
    assert took < 9, f"exit took {took:.1f} s"  # its 2 s grace, not the long job's 12 s
    assert "handed back 1 unfinished job" in a.output()
    for tag, job in short.items():
        assert job.result(timeout=30) == "A", tag
        assert cluster.started(tag) == ["A"]
    b.wait_ready()
    wait_for(lambda: cluster.started("long") == ["A", "B"], 15, cluster.outputs)
    assert long.result(timeout=20) == "B"
    assert b.alive()
    report = check(acknowledged=tags, executed=cluster.executed(), completed=tags)
    report.assert_ok(max_duplicates=1)  # the handed-back job runs once more
    assert report.duplicated == {"long": 1}
    app.close()


@pytest.mark.timeout(90)
def test_the_heroku_sequence_term_the_group_term_again_then_kill_loses_nothing(
    cluster: Cluster,
) -> None:
    app = cluster.app()
    concurrency = 4
    a = cluster.worker(
        "A",
        "--pool",
        "processes",
        "-c",
        str(concurrency),
        "--grace",
        "20",
        "--lease",
        "1",
        new_session=True,
    )
    tags = [f"j{i}" for i in range(12)]
    jobs = {t: send(app, "sleepy", t, 2.0) for t in tags}
    wait_for(lambda: len(set(cluster.executed())) >= concurrency, 30, cluster.outputs)

    a.signal_group(signal.SIGTERM)  # the platform signals every process in the dyno
    time.sleep(0.5)
    a.signal_group(signal.SIGTERM)  # the second: hand back and stop now
    try:
        code: int | None = a.wait(10)  # the KILL; the grace (20 s) would come later
    except Exception:
        code = None
    if a.alive():
        a.signal_group(signal.SIGKILL)
        a.wait(10)

    b = cluster.worker("B", "--lease", "1", "-c", "4")
    results = {t: j.result(timeout=40) for t, j in jobs.items()}
    assert set(results) == set(tags)
    report = check(acknowledged=tags, executed=cluster.executed(), completed=tags)
    print(report)
    report.assert_ok(max_duplicates=concurrency)  # only the jobs in flight run again
    assert code == 0, f"the worker did not exit 0 on the second TERM:\n{a.output()}"
    assert b.alive()
    app.close()


@pytest.mark.timeout(60)
def test_with_the_process_pool_a_self_killing_job_counts_deliveries_and_the_worker_survives(
    cluster: Cluster,
) -> None:
    """With ``--pool processes`` only the child dies, and that is a delivery, as if the
    worker had died: no outcome, the lease lapses, the job comes back (to the same worker,
    which replaced its child) and is dead-lettered once delivered more than
    ``--max-deliveries`` times. Never recorded as a task failure; no restarts needed."""
    app = cluster.app()
    worker = cluster.worker(
        "P", "--pool", "processes", "-c", "2", "--lease", "1", "--max-deliveries", "3"
    )
    job = send(app, "suicide", "poison")
    with pytest.raises(JobDead) as info:
        job.result(timeout=40)
    assert info.value.reason.startswith("delivered 4 times without finishing"), info.value
    assert worker.alive(), worker.output()
    assert cluster.started("poison") == ["P", "P", "P"]
    pids = {pid for e, t, _, pid in cluster.runs() if e == "start" and t == "poison"}
    assert len(pids) == 3  # each delivery in a fresh child
    assert "its process died (killed by SIGKILL)" in worker.output()
    after = {f"ok{i}": send(app, "sleepy", f"ok{i}", 0.0) for i in range(4)}
    assert {t: j.result(timeout=20) for t, j in after.items()} == dict.fromkeys(after, "P")
    before = worker.cpu_seconds()
    time.sleep(2.0)
    assert worker.cpu_seconds() - before < 0.5, "the worker spun"
    report = check(
        acknowledged=[*after, "poison"], executed=cluster.executed(), completed=[*after, "poison"]
    )  # dead-lettered is an end too
    report.assert_ok(max_duplicates=2)  # the poison's 2 reruns, and no other
    assert report.duplicated == {"poison": 2}
    app.close()


def _group_is_gone(pgid: int) -> bool:
    """True if no process is left in process group ``pgid`` (signal 0 reaches none)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "cluster", params(shared=True, embedded=False, workers=True), indirect=True
)  # see below
def test_the_heroku_sequence_in_real_time_kill_30_s_after_the_first_term(
    cluster: Cluster,
) -> None:
    """The platform's real timing; this test takes ~20 s of CI time on purpose, so it runs
    on the server-backed brokers only (dynos share no disk: on Heroku the broker is a
    server; the compressed variant above covers SQLite too).

    Two ``--pool processes`` workers in process groups of their own (a dyno each), both with
    the default 30 s lease, so only a hand-back (never a lease expiry) can bring a job to
    another worker before the KILL. Each runs three short jobs and one long one:

    * A (grace 20 s) gets TERM, then, once its short jobs have finished and while it still
      waits for its long one, a second TERM: it hands the long job back at once, exits 0.
    * C (grace 5 s) gets only the TERM: its long job outlasts the grace, which hands it back
      at 5 s and exits 0, long before the KILL.
    * 30 s after the first TERM both groups get KILL, as the platform does: by then nothing
      is left in either group (no child process outlived its worker). The test waits only
      until both groups are empty: the KILL would find them so, as it finds them at 30 s.

    Every short job finished on its own worker, each long job ran once more on B, nothing
    was lost.
    """
    app = cluster.app()
    common = ("--pool", "processes", "-c", "4")  # the default lease: 30 s
    a = cluster.worker("A", *common, "-q", "dyno-a", "--grace", "20", new_session=True)
    c = cluster.worker("C", *common, "-q", "dyno-c", "--grace", "5", new_session=True)
    jobs = {f"a{i}": send(app, "sleepy", f"a{i}", 3.0, queue="dyno-a") for i in range(3)}
    jobs["a-long"] = send(app, "sleepy", "a-long", 9.0, queue="dyno-a")
    jobs |= {f"c{i}": send(app, "sleepy", f"c{i}", 2.0, queue="dyno-c") for i in range(3)}
    jobs["c-long"] = send(app, "sleepy", "c-long", 10.0, queue="dyno-c")
    on = {t: t[0].upper() for t in jobs}  # the worker that starts each job
    wait_for(lambda: all(cluster.started(t) == [on[t]] for t in jobs), 30, cluster.outputs)
    # The dyno that stays; it comes up while the others stop (the long jobs' margins over
    # the short jobs and the grace do not depend on how fast an interpreter starts).
    b = cluster.worker("B", "-c", "4", "-q", "dyno-a,dyno-c", ready=False)

    first_term = time.monotonic()
    a.signal_group(signal.SIGTERM)
    c.signal_group(signal.SIGTERM)

    def a_short_ended() -> bool:
        # Ended in the broker, not only in the job's body: a body that has returned but
        # whose result the worker has not yet written is still in flight, and the second
        # TERM would hand it back too.
        ends = {t for e, t, _, _ in cluster.runs() if e == "end"}
        if not ends >= {"a0", "a1", "a2"}:
            return False
        return all(jobs[t].status is JobStatus.SUCCEEDED for t in ("a0", "a1", "a2"))

    wait_for(a_short_ended, 15, cluster.outputs)
    assert a.alive(), a.output()  # the first TERM did not stop it: it waits for a-long
    a.signal_group(signal.SIGTERM)  # the second: hand back and stop now
    assert a.wait(10) == 0, a.output()
    assert c.wait(max(first_term + 5 + 10 - time.monotonic(), 1.0)) == 0, c.output()
    assert "handed back 1 unfinished job" in a.output()
    assert "handed back 1 unfinished job" in c.output()
    b.wait_ready()

    kill_at = first_term + 30
    while time.monotonic() < kill_at and not all(_group_is_gone(w.pid) for w in (a, c)):
        time.sleep(0.1)
    for worker in (a, c):  # the KILL at 30 s finds no process of either dyno
        assert _group_is_gone(worker.pid), f"processes of {worker.name} outlived it"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)

    results = {t: j.result(timeout=30) for t, j in jobs.items()}
    assert results == {t: ("B" if "long" in t else on[t]) for t in jobs}, cluster.outputs()
    for t in jobs:
        assert cluster.started(t) == ([on[t], "B"] if "long" in t else [on[t]]), t
    assert b.alive()
    report = check(acknowledged=list(jobs), executed=cluster.executed(), completed=list(jobs))
    report.assert_ok(max_duplicates=2)  # each long job ran once more, nothing else
    assert report.duplicated == {"a-long": 1, "c-long": 1}
    app.close()
