"""Destination rules from the config file: parsing, errors and first-match decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stomp_chat.authz.rules import SEND, SUBSCRIBE, Grant, RuleError, RuleSet, load_rules
from stomp_chat.identity import Principal

ALICE = Principal("alice", "Alice")
OPS = Principal("olga", "Olga", frozenset({"ops"}))
BOB = Principal("bob", "Bob")

CONFIG = """
http = "tcp:8080"

[[rules]]
destination = "/topic/ops.**"
subscribe = ["role:ops"]
send = ["user:alice"]

[[rules]]
destination = "/topic/**"
subscribe = ["authenticated"]

[[rules]]
destination = "/queue/closed"
send = []
"""


def test_rules_load_from_a_toml_file(tmp_path: Path) -> None:
    """The [[rules]] of a config file become rules in file order, other keys ignored."""
    path = tmp_path / "stomp-chat.toml"
    path.write_text(CONFIG)
    rules = load_rules(str(path))
    assert len(rules) == 3
    assert rules.rules[0].subscribe == (Grant("role", "ops"),)
    assert rules.rules[0].send == (Grant("user", "alice"),)
    assert rules.rules[1].send is None


def test_a_file_without_rules_is_an_empty_rule_set(tmp_path: Path) -> None:
    """A config file without [[rules]] gives no rules (so everything not built in is denied)."""
    path = tmp_path / "c.toml"
    path.write_text('http = "tcp:8080"\n')
    assert len(load_rules(str(path))) == 0


def test_first_matching_rule_that_names_the_action_decides(tmp_path: Path) -> None:
    """Per action, the first rule whose pattern matches and that lists the action decides."""
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    rules = load_rules(str(path))
    assert rules.decide(SUBSCRIBE, "/topic/ops.alerts", OPS) is True
    assert rules.decide(SUBSCRIBE, "/topic/ops.alerts", ALICE) is False
    assert rules.decide(SEND, "/topic/ops.alerts", ALICE) is True
    assert rules.decide(SEND, "/topic/ops.alerts", OPS) is False
    # the ops rule says nothing of other topics; the second rule lets anyone subscribe
    assert rules.decide(SUBSCRIBE, "/topic/news", BOB) is True
    # no rule speaks of sending to /topic/news: undecided
    assert rules.decide(SEND, "/topic/news", BOB) is None
    # an empty list denies everyone
    assert rules.decide(SEND, "/queue/closed", OPS) is False
    assert rules.decide(SUBSCRIBE, "/queue/other", OPS) is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"destination": "/x"}, "array of tables"),
        (["not a table"], "rule 1 .* must be a table"),
        ([{"subscribe": ["authenticated"]}], "rule 1 .* needs a destination"),
        ([{"destination": "/topic/x"}], "neither subscribe nor send"),
        ([{"destination": "/topic/x", "publish": []}], "unknown key"),
        ([{"destination": "topic/x", "send": []}], "starts with '/'"),
        ([{"destination": "/topic/x", "send": "role:ops"}], "list of strings"),
        ([{"destination": "/topic/x", "send": ["group:ops"]}], "a grant is"),
        ([{"destination": "/topic/x", "send": ["role:"]}], "a grant is"),
        ([{"destination": "/topic/x", "send": []}, {"destination": "/t", "send": [1]}],
         "rule 2"),
    ],
)
def test_bad_rules_are_refused_with_a_clear_message(entries: Any, message: str) -> None:
    """Every malformed rule is a RuleError that says which rule and what is wrong."""
    with pytest.raises(RuleError, match=message):
        RuleSet.from_config(entries, "test.toml")


def test_unreadable_or_invalid_files_are_rule_errors(tmp_path: Path) -> None:
    """A missing file or invalid TOML is a RuleError, not a traceback."""
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\n")
    with pytest.raises(RuleError, match="not valid TOML"):
        load_rules(str(bad))


def test_grants_admit_users_roles_and_anyone_authenticated() -> None:
    """user: matches the user id, role: a role, authenticated everyone signed in."""
    assert Grant.parse("user:alice").admits(ALICE)
    assert not Grant.parse("user:alice").admits(BOB)
    assert Grant.parse("role:ops").admits(OPS)
    assert not Grant.parse("role:ops").admits(ALICE)
    assert Grant.parse("authenticated").admits(BOB)
    assert str(Grant.parse("role:ops")) == "role:ops"
