"""A small shop's tasks; the tests next to this file show how to test them (docs/testing.md).

conveyor worker tasks          # the worker, as in production
pytest                         # the tests: no worker, no server, no sleeping
"""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()  # CONVEYOR_URL if set, else sqlite:///./conveyor.db

RATES = {"EUR": 1.0, "USD": 1.08, "JPY": 162.5}
_warm: set[str] = set()  # the rate service's cache, per process


@app.task(retries=3, backoff=2.0)
def fetch_rate(currency: str) -> float:
    """Ask the rate service; its first answer for a currency times out (a cold cache)."""
    if currency not in _warm:
        _warm.add(currency)
        raise TimeoutError(f"the rate service timed out for {currency}")
    return RATES[currency]


@app.task
def convert(rate: float, cents: int) -> int:
    return round(cents * rate)


@app.periodic(cron="0 6 * * mon-fri", tz="Europe/Paris")
def morning_report() -> int:
    """Weekdays at 06:00 in Paris, summer and winter."""
    return app.store.incr("reports")
