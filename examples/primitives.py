"""Locks, the cache and the store: they work on every broker and need no worker.

Run: python examples/primitives.py   (uses ./conveyor.db, or CONVEYOR_URL)
"""

from __future__ import annotations

import time

from conveyor import Conveyor

app = Conveyor()


@app.cached(ttl=60)
def price(sku: str) -> float:
    time.sleep(0.2)  # a slow database
    return 9.99


def main() -> None:
    with app.lock("invoice:42", ttl=30, timeout=5) as lk:
        # Pass lk.fence to the resource you write: it can refuse a writer with a smaller one.
        print(f"holding invoice:42 with fencing token {lk.fence}")

    started = time.perf_counter()
    price("sku-1")
    price("sku-1")
    print(f"two cached lookups in {time.perf_counter() - started:.2f} s (one computation)")
    price.invalidate("sku-1")

    app.store.set("greeting", {"text": "hello"}, ttl=60)
    print("store:", app.store.get("greeting"))
    app.store.delete("visits")
    for _ in range(3):
        app.store.update("visits", lambda n: (n or 0) + 1)
    print("visits:", app.store.get("visits"))


if __name__ == "__main__":
    main()
