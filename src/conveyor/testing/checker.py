"""Jepsen-style total-queue bookkeeping, shared by every torture scenario.

A scenario records what it saw and hands it to ``check``:

* ``acknowledged``: ids whose enqueue returned (the broker said "written");
* ``unknown``: ids whose enqueue outcome is unknown (the call raised mid-flight: the job may
  or may not have been written);
* ``executed``: one item per run that started, a job id or ``(job id, attempt)``: a retry
  scheduled by the task is a new attempt, not a duplicate;
* ``completed``: one item per job id whose end was recorded (terminal outcome accepted).

and gets a ``Report``:

* **lost**: acknowledged, never completed (the one thing that must never happen);
* **recovered**: outcome unknown, yet completed (fine: the write had landed);
* **unexpected**: executed or completed, never enqueued (a phantom or another test's job);
* **duplicated**: runs of the same (job, attempt) beyond the first, per job; at-least-once
  allows them, bounded by the faults the scenario injected (``assert_ok(max_duplicates=k)``);
* **completed_twice**: jobs whose end was recorded more than once: fenced completion forbids
  it whatever the faults.

The names are those of the ``total-queue`` checker of rabbitmq/jepsen (``jepsen.ra``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

Run = str | tuple[str, int]


def _job_id(run: Run) -> str:
    return run if isinstance(run, str) else run[0]


def _sample(ids: Iterable[str], n: int = 5) -> str:
    items = sorted(ids)
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


@dataclass(frozen=True)
class Report:
    acknowledged: int
    unknown: int
    completed: int
    runs: int
    lost: frozenset[str] = frozenset()
    recovered: frozenset[str] = frozenset()
    unexpected: frozenset[str] = frozenset()
    duplicated: dict[str, int] = field(default_factory=dict)  # job id -> extra runs
    completed_twice: frozenset[str] = frozenset()

    @property
    def duplicate_runs(self) -> int:
        return sum(self.duplicated.values())

    def within(self, max_duplicates: int) -> bool:
        """Duplicates no more than the injected faults allow."""
        return self.duplicate_runs <= max_duplicates

    def problems(self, max_duplicates: int = 0) -> list[str]:
        found = []
        if self.lost:
            found.append(f"lost {len(self.lost)}: {_sample(self.lost)}")
        if self.unexpected:
            found.append(f"unexpected {len(self.unexpected)}: {_sample(self.unexpected)}")
        if self.completed_twice:
            found.append(
                f"completed twice {len(self.completed_twice)}: {_sample(self.completed_twice)}"
            )
        if not self.within(max_duplicates):
            found.append(
                f"duplicated {self.duplicate_runs} run(s) of {len(self.duplicated)} "
                f"job(s), over the bound of {max_duplicates}: "
                f"{_sample(self.duplicated)}"
            )
        return found

    def assert_ok(self, max_duplicates: int = 0) -> None:
        """Fail unless nothing was lost, unexpected or completed twice, and duplicates stay
        within ``max_duplicates`` (the number of faults that may each cause one rerun)."""
        found = self.problems(max_duplicates)
        if found:
            raise AssertionError(f"{self}\n  " + "\n  ".join(found))

    def __str__(self) -> str:
        return (
            f"acknowledged {self.acknowledged} + unknown {self.unknown}; "
            f"completed {self.completed}; runs {self.runs} | "
            f"lost {len(self.lost)}, recovered {len(self.recovered)}, "
            f"unexpected {len(self.unexpected)}, "
            f"duplicated {self.duplicate_runs} (of {len(self.duplicated)} job(s)), "
            f"completed twice {len(self.completed_twice)}"
        )


def check(
    *,
    acknowledged: Iterable[str],
    unknown: Iterable[str] = (),
    executed: Iterable[Run] = (),
    completed: Iterable[str] = (),
) -> Report:
    acked = set(acknowledged)
    maybe = set(unknown) - acked  # retried and then acknowledged: it counts as acknowledged
    runs = Counter(executed)
    ends = Counter(completed)
    done = set(ends)
    enqueued = acked | maybe
    extra: Counter[str] = Counter()
    for run, n in runs.items():
        if n > 1:
            extra[_job_id(run)] += n - 1
    seen = {_job_id(r) for r in runs} | done
    return Report(
        acknowledged=len(acked),
        unknown=len(maybe),
        completed=len(done),
        runs=sum(runs.values()),
        lost=frozenset(acked - done),
        recovered=frozenset(maybe & done),
        unexpected=frozenset(seen - enqueued),
        duplicated=dict(extra),
        completed_twice=frozenset(i for i, n in ends.items() if n > 1),
    )
