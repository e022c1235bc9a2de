"""Tasks for the workflows example: `conveyor worker tasks` runs them."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()


@app.task
def fetch(city: str) -> dict[str, object]:
    return {"city": city, "temps": [len(city) + i for i in range(3)]}


@app.task
def average(report: dict[str, object]) -> float:
    temps = report["temps"]
    assert isinstance(temps, list)
    return sum(temps) / len(temps)


@app.task
def describe(value: float, unit: str = "C") -> str:
    return f"{value:.1f} {unit}"


@app.task
def hottest(values: list[float]) -> float:
    return max(values)


@app.task
def warmer(first_id: str, second_id: str) -> str:
    """Runs once both jobs have ended (``depends_on``); it reads their results itself."""
    first, second = app.job(first_id).result(), app.job(second_id).result()
    hotter = first if average(first) >= average(second) else second
    return str(hotter["city"])
