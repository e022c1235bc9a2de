"""chain, group and chord (a worker must be running: see README)."""

from __future__ import annotations

from tasks import average, describe, fetch, hottest, warmer

from conveyor import chain, chord, group

CITIES = ["Oslo", "Lisbon", "Nairobi", "Lima"]


def main() -> None:
    # Each result becomes the next step's first argument.
    print("chain:", chain(fetch.s("Oslo"), average.s(), describe.s(unit="C")).delay().result(30))

    # A group's job resolves to the list of results, in order.
    print("group:", group(average.s(fetch(c)) for c in CITIES).delay().result(30))

    # A chord's callback gets the group's list.
    job = chord(group(chain(fetch.s(c), average.s()) for c in CITIES), hottest.s()).delay()
    print("chord:", job.result(30))

    # depends_on: a job that waits until other jobs have ended (results are not passed on).
    oslo, lima = fetch.delay("Oslo"), fetch.delay("Lima")
    print("depends_on:", warmer.options(depends_on=[oslo, lima]).delay(oslo.id, lima.id).result(30))


if __name__ == "__main__":
    main()
