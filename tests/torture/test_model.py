"""The model test (``conveyor.testing.model``) on every broker of ``tests/brokers.py``.

A server-backed broker runs on a server of the test's own that syncs every write before it
replies, and the model restarts it (``kill -9``) at most once per example: nothing it
acknowledged may be lost.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from brokers import TestBroker, params
from conveyor.testing.model import run_model

EXAMPLES = 100
# A restarted cluster master holds writes for 2 s (Redis's CLUSTER_WRITABLE_DELAY), so a
# restart there costs 2 s, not ~50 ms; a PostgreSQL restart (pg_ctl stop -m immediate, then
# start with crash recovery) costs 0.3-1.5 s, and on a loaded machine 100 examples went past
# the timeout: fewer examples keep each test within its time.
FEWER = {
    "redis-cluster": 20,
    "redis-cluster-sharded": 20,
    "postgres": 40,
    "rabbitmq-postgres": 40,
}


# Green, the three run in ~15 s; the timeout leaves the shrinker room to report a failure.
@pytest.mark.timeout(150)
@pytest.mark.parametrize("spec", params())
def test_model(spec: TestBroker, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    place = spec.place(request, tmp_path, "durable")
    started = time.monotonic()
    examples = FEWER.get(spec.name, EXAMPLES)
    run_model(
        lambda clock: place.new().open(clock),
        restart=place.restart,
        examples=examples,
        name=spec.name,
    )
    print(f"model {spec.name}: {examples} examples in {time.monotonic() - started:.1f} s")
