"""New job ids: time-sorted, unique, unique across a fork and threads, unpredictable."""

from __future__ import annotations

import os
import random
import re
import threading

import pytest

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


def test_ids_minted_by_many_threads_at_once_are_unique() -> None:
    minted: list[list[str]] = [[] for _ in range(8)]

    def mint(out: list[str]) -> None:
        out.extend(new_job_id() for _ in range(5_000))

    threads = [threading.Thread(target=mint, args=(out,)) for out in minted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in minted for i in out]
    assert len(set(ids)) == len(ids) == 40_000


def test_the_random_part_is_the_systems_so_ids_tell_nothing_of_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An id may be all that guards a job's result (examples/fastapi gives it to the client
    # that asks for the result): a seeded generator's later outputs follow from a few
    # hundred earlier ones, so its ids would give away everybody else's.
    real, drawn = os.urandom, []

    def recorded(n: int) -> bytes:
        drawn.append(real(n))
        return drawn[-1]

    monkeypatch.setattr(os, "urandom", recorded)
    parts = [new_job_id()[12:] for _ in range(1_000)]
    system = b"".join(drawn).hex()
    assert all(part in system for part in parts[500:])
