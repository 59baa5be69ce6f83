"""Who may subscribe to and send to which destination, from the config file.

A deployment writes rules as a TOML array of tables::

    [[rules]]
    destination = "/topic/ops.**"
    subscribe = ["role:ops"]
    send = ["user:alice", "role:ops"]

Each grant names ``user:ID`` (a principal's user id, a JWT's ``sub``),
``role:NAME`` (a principal's role) or ``authenticated`` (anyone signed in).
Rules are read in file order, and for an action the first rule whose pattern
matches the destination and that lists the action decides; an empty list
denies everyone. A destination no rule decides falls to the built-in rules
(rooms, user destinations), and then is denied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stomp_chat.authz.patterns import DestinationPattern
from stomp_chat.identity import Principal

SUBSCRIBE = "subscribe"
SEND = "send"
ACTIONS = (SUBSCRIBE, SEND)

GRANT_AUTHENTICATED = "authenticated"
_GRANT_KINDS = ("user", "role")


class RuleError(ValueError):
    """A rule in the config file that cannot be understood; the message says which."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One entry of a rule's ``subscribe``/``send`` list."""

    kind: str  # "user", "role" or "authenticated"
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Grant:
        if text == GRANT_AUTHENTICATED:
            return cls(GRANT_AUTHENTICATED)
        kind, sep, value = text.partition(":")
        if not sep or kind not in _GRANT_KINDS or not value:
            raise RuleError(
                f"a grant is 'user:ID', 'role:NAME' or '{GRANT_AUTHENTICATED}', not {text!r}"
            )
        return cls(kind, value)

    def admits(self, principal: Principal) -> bool:
        if self.kind == GRANT_AUTHENTICATED:
            return True
        if self.kind == "user":
            return principal.user_id == self.value
        return principal.has_role(self.value)

    def __str__(self) -> str:
        return self.kind if self.kind == GRANT_AUTHENTICATED else f"{self.kind}:{self.value}"


def admitted(grants: Iterable[Grant], principal: Principal) -> bool:
    """Whether any of ``grants`` lets ``principal`` in."""
    return any(grant.admits(principal) for grant in grants)


@dataclass(frozen=True, slots=True)
class Rule:
    """A destination pattern and, per action it lists, who may do it."""

    pattern: DestinationPattern
    #: Per action: the grants, or None when the rule says nothing of it.
    subscribe: tuple[Grant, ...] | None = None
    send: tuple[Grant, ...] | None = None

    def grants(self, action: str) -> tuple[Grant, ...] | None:
        return self.subscribe if action == SUBSCRIBE else self.send


class RuleSet:
    """The configured rules, in order."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)

    def __len__(self) -> int:
        return len(self.rules)

    def decide(self, action: str, destination: str, principal: Principal) -> bool | None:
        """True or False from the first rule that decides, None if none does."""
        for rule in self.rules:
            grants = rule.grants(action)
            if grants is not None and rule.pattern.matches(destination):
                return admitted(grants, principal)
        return None

    @classmethod
    def from_config(cls, entries: Any, source: str = "the config file") -> RuleSet:
        """Build from the ``rules`` value of a parsed TOML file; RuleError on anything odd."""
        if not isinstance(entries, list):
            raise RuleError(f"'rules' in {source} must be an array of tables ([[rules]])")
        rules = []
        for number, entry in enumerate(entries, start=1):
            where = f"rule {number} in {source}"
            if not isinstance(entry, Mapping):
                raise RuleError(f"{where} must be a table with 'destination' and 'subscribe'/"
                                "'send'")
            unknown = set(entry) - {"destination", *ACTIONS}
            if unknown:
                raise RuleError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                "use destination, subscribe, send")
            destination = entry.get("destination")
            if not isinstance(destination, str):
                raise RuleError(f"{where} needs a destination pattern (a string)")
            if not any(action in entry for action in ACTIONS):
                raise RuleError(f"{where} ({destination}) says neither subscribe nor send")
            try:
                pattern = DestinationPattern(destination)
                grants = {action: _grants(entry, action) for action in ACTIONS}
            except (RuleError, ValueError) as error:
                raise RuleError(f"{where}: {error}") from None
            rules.append(Rule(pattern, grants[SUBSCRIBE], grants[SEND]))
        return cls(rules)


def _grants(entry: Mapping[str, Any], action: str) -> tuple[Grant, ...] | None:
    if action not in entry:
        return None
    values = entry[action]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RuleError(f"{action} must be a list of strings such as [\"role:ops\"]")
    return tuple(Grant.parse(value) for value in values)


def load_rules(path: str) -> RuleSet:
    """The ``[[rules]]`` of a TOML config file (none: an empty RuleSet)."""
    import tomllib

    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise RuleError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise RuleError(f"{path} is not valid TOML: {error}") from None
    if "rules" not in data:
        return RuleSet()
    return RuleSet.from_config(data["rules"], path)
