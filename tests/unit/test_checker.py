"""The torture tests' bookkeeping (``conveyor.testing.checker``) counts each class of fault."""

from __future__ import annotations

import pytest

from conveyor.testing.checker import check


def test_checker_counts_each_class() -> None:
    report = check(
        acknowledged=["a", "b", "c", "d"],
        unknown=["u", "v"],
        executed=["a", ("b", 0), ("b", 0), ("b", 1), "c", "u", "x"],
        completed=["a", "b", "c", "u", "c"],
    )
    assert report.lost == {"d"}
    assert report.recovered == {"u"}
    assert report.unexpected == {"x"}
    assert report.duplicated == {"b": 1}  # attempt 1 is a retry, not a duplicate
    assert report.completed_twice == {"c"}
    assert "lost 1" in str(report) and "recovered 1" in str(report)
    with pytest.raises(AssertionError, match="lost 1: d"):
        report.assert_ok(max_duplicates=5)


def test_checker_bounds_duplicates_by_the_faults() -> None:
    report = check(acknowledged=["a", "b"], executed=["a", "a", "a", "b"], completed=["a", "b"])
    assert report.duplicate_runs == 2 and report.within(2) and not report.within(1)
    report.assert_ok(max_duplicates=2)
    with pytest.raises(AssertionError, match="over the bound of 1"):
        report.assert_ok(max_duplicates=1)


def test_checker_counts_an_unknown_then_acknowledged_id_once() -> None:
    report = check(acknowledged=["a"], unknown=["a"], executed=["a"], completed=["a"])
    assert (report.acknowledged, report.unknown, report.recovered) == (1, 0, frozenset())
    report.assert_ok()
