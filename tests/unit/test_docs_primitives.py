"""docs/primitives.md: the cache example runs as written on the default codec, each function
body (``...`` on the page) returning an empty value of the type it declares."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from conveyor import Conveyor

DOC = Path(__file__).resolve().parents[2] / "docs" / "primitives.md"


def cache_example() -> str:
    section = DOC.read_text().split("## Cache", 1)[1]
    block = re.search(r"^```python\n(.*?)^```$", section, flags=re.M | re.S)
    assert block is not None
    # `def f(...) -> T: ...` gets a body: `return T()`, a value of the type it declares.
    return re.sub(r"-> (\w+): \.\.\.", r"-> \1: return \1()", block.group(1))


@dataclass
class User:
    id: int


def test_the_cache_example_runs_and_its_key_function_takes_positional_calls() -> None:
    with Conveyor("memory://") as app:
        names: dict[str, Any] = {"app": app, "User": User, "Decimal": Decimal}
        names["__name__"] = "shop.prices"
        exec(compile(cache_example(), str(DOC), "exec"), names)
        price, profile = names["price"], names["profile"]
        assert price("A-1") == price(sku="A-1")
        assert price.cache_key("A-1").startswith("cache:shop.prices.price:")
        user = User(7)
        for call in (profile(user), profile(user, True), profile(user, verbose=True)):
            assert asyncio.run(call) == {}
        assert profile.cache_key(user, True) == "cache:shop.prices.profile:user:7"
