"""Destination patterns, as the rules in the config file write them.

``*`` stands for any run of characters without a ``/`` (one path segment,
or part of one: ``/topic/ops.*``); ``**`` for any run of characters at all,
slashes included (``/topic/ops/**``). Everything else is literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DestinationPattern:
    """One compiled destination pattern; ``matches`` is a single regex match."""

    text: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.text.startswith("/"):
            raise ValueError(f"a destination pattern starts with '/': {self.text!r}")
        if "***" in self.text:
            raise ValueError(f"use '*' or '**', not '***': {self.text!r}")
        object.__setattr__(self, "_regex", re.compile(_translate(self.text) + r"\Z"))

    def matches(self, destination: str) -> bool:
        return self._regex.match(destination) is not None


def _translate(pattern: str) -> str:
    parts = []
    for index, chunk in enumerate(pattern.split("**")):
        if index:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(piece) for piece in chunk.split("*")))
    return "".join(parts)
