"""New job ids: time-sorted, unique, and unique across a fork."""

from __future__ import annotations

import os
import random
import re

from conveyor._message import new_job_id


def test_ids_are_26_hex_characters_and_unique() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{26}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_mints_other_ids_than_its_parent() -> None:
    # Both would draw the same random parts from a generator copied by the fork.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_job_id()[12:] for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1000).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    parent = [new_job_id()[12:] for _ in range(5)]
    assert len(child) == 5 and not set(child) & set(parent)


def test_an_app_seeding_random_does_not_repeat_ids() -> None:
    random.seed(42)
    first = new_job_id()[12:]
    random.seed(42)
    assert new_job_id()[12:] != first
