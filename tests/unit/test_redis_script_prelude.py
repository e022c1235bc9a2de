"""Each Redis script carries only the helpers of common.lua it uses (``_scripts.prelude``)."""

from __future__ import annotations

import re
from importlib import resources

from conveyor.brokers.redis import _scripts

COMMON = """-- head comment
local NOW = 1
local GROUP = ARGV[2]

local function a(x)
  return x
end

-- b uses a
local function b(x)
  return a(x) + 1
end

local C = 'c'

-- d uses C
local function d()
  return C  -- not b(): a name in a comment does not count
end
"""


def defined(text: str) -> list[str]:
    return re.findall(r"^local (?:function )?(\w+)", text, re.M)


def test_keeps_the_head_and_what_the_body_uses_through_other_helpers() -> None:
    out = _scripts.prelude("return b(2)", COMMON)
    assert defined(out) == ["NOW", "GROUP", "a", "b"]
    assert "-- b uses a\n" in out  # a helper's comment comes with it


def test_a_constant_comes_with_the_helper_that_names_it() -> None:
    assert defined(_scripts.prelude("return d()", COMMON)) == ["NOW", "GROUP", "C", "d"]


def test_names_in_comments_of_the_body_pull_nothing() -> None:
    assert defined(_scripts.prelude("-- b(1)\nreturn 1", COMMON)) == ["NOW", "GROUP"]


def _common() -> str:
    folder = resources.files("conveyor.brokers.redis")
    return folder.joinpath("common.lua").read_text(encoding="utf-8")


def test_every_script_defines_each_helper_it_calls_and_no_other() -> None:
    helpers = set(re.findall(r"^local function (\w+)", _common(), re.M))
    for name in _scripts.NAMES:
        text = _scripts.source(name)
        have = set(re.findall(r"^local function (\w+)", text, re.M)) & helpers
        code = re.sub(r"--[^\n]*", "", text)
        called = {h for h in helpers if re.search(rf"(?<!function ){h}\b", code)}
        assert called == have, name
    assert len(re.findall(r"^local function", _scripts.source("progress"), re.M)) == 3


def test_scripts_are_built_on_first_use_only() -> None:
    class Client:
        def __init__(self) -> None:
            self.registered: list[str] = []

        def register_script(self, source: str) -> str:
            self.registered.append(source)
            return source

    client = Client()
    scripts = _scripts.Scripts(client)
    assert client.registered == []
    assert scripts["enqueue"] == _scripts.source("enqueue")
    assert scripts["enqueue"] is scripts["enqueue"]
    assert client.registered == [_scripts.source("enqueue")]
