"""Encode + decode cost of one job envelope with msgspec, orjson and the stdlib json.

Run: .venv/bin/python bench/codec.py   (orjson is measured only if installed)
"""

from __future__ import annotations

import json
import timeit

import msgspec
from conveyor._message import Message

MESSAGE = Message(
    id="01a21ed9cd6e3b4c21bba6e0b0",
    task="myapp.tasks:resize",
    args=["images/2024/a.png", 640],
    kwargs={"quality": 85, "formats": ["webp", "avif"]},
    queue="images",
    priority=5,
    retries=3,
    enqueued_at=1795812546.8,
)
N = 100_000


def main() -> None:
    enc = msgspec.json.Encoder()
    dec = msgspec.json.Decoder(Message)
    as_dict = msgspec.structs.asdict(MESSAGE)
    cases = {
        "msgspec (typed Struct)": lambda: dec.decode(enc.encode(MESSAGE)),
        "stdlib json (dict)": lambda: Message(**json.loads(json.dumps(as_dict))),
    }
    try:
        import orjson

        cases["orjson (dict)"] = lambda: Message(**orjson.loads(orjson.dumps(as_dict)))
    except ImportError:
        pass
    results = {
        name: min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6 for name, fn in cases.items()
    }
    best = results["msgspec (typed Struct)"]
    for name, us in results.items():
        print(f"{name:24s} {us:6.2f} us per round trip  ({us / best:.1f}x msgspec)")


if __name__ == "__main__":
    main()
