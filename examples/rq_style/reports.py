"""Plain application code: it knows nothing about Conveyor."""

from __future__ import annotations


def build(year: int, region: str = "all") -> dict[str, object]:
    return {"year": year, "region": region, "rows": year % 97}
