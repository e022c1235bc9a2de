"""Middleware for the settings tests: one a dotted path cannot make (it needs an argument)."""

from conveyor import Middleware


class Tagged(Middleware):
    def __init__(self, tag: str) -> None:
        self.tag = tag
