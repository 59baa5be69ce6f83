"""Tests for stomp_chat.config: command line > STOMP_CHAT_* environment > --config file > defaults,
and every error path of the file and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from stomp_chat.config import env_name
from stomp_chat.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def config_file(tmp_path: Path):
    def write(text: str) -> str:
        path = tmp_path / "stomp-chat.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STOMP_CHAT_* option variable leaks in from the environment the tests run in."""
    import os

    for name in list(os.environ):
        if name.startswith("STOMP_CHAT_") and not name.startswith("STOMP_CHAT_TEST_"):
            monkeypatch.delenv(name)


def test_env_names_follow_the_option_names() -> None:
    """--max-frame-size is STOMP_CHAT_MAX_FRAME_SIZE."""
    assert env_name("max-frame-size") == "STOMP_CHAT_MAX_FRAME_SIZE"


def test_defaults_apply_without_file_or_environment() -> None:
    """With nothing set, the built-in defaults apply."""
    options = parse()
    assert options["history-size"] == 30
    assert options["drain-window"] == 5.0


def test_the_file_overrides_the_defaults(config_file) -> None:
    """A value in the --config file replaces the default."""
    path = config_file("history-size = 7\nwrite_batch = 10\n")
    options = parse("--config", path)
    assert (options["history-size"], options["write-batch"]) == (7, 10)


def test_the_environment_overrides_the_file(config_file, monkeypatch) -> None:
    """STOMP_CHAT_HISTORY_SIZE wins over the file; the file still sets the rest."""
    path = config_file("history-size = 7\nwrite-batch = 10\n")
    monkeypatch.setenv("STOMP_CHAT_HISTORY_SIZE", "8")
    options = parse("--config", path)
    assert (options["history-size"], options["write-batch"]) == (8, 10)


def test_the_command_line_overrides_the_environment(config_file, monkeypatch) -> None:
    """The command line wins over both the environment and the file."""
    path = config_file("history-size = 7\n")
    monkeypatch.setenv("STOMP_CHAT_HISTORY_SIZE", "8")
    options = parse("--config", path, "--history-size", "9")
    assert options["history-size"] == 9


def test_the_config_file_can_come_from_the_environment(config_file, monkeypatch) -> None:
    """STOMP_CHAT_CONFIG names the file when the command line does not."""
    monkeypatch.setenv("STOMP_CHAT_CONFIG", config_file("history-size = 6\n"))
    assert parse()["history-size"] == 6


def test_the_environment_sets_text_and_endpoint_options(monkeypatch, tmp_path) -> None:
    """STOMP_CHAT_DATABASE and STOMP_CHAT_STOMP are parsed like their options."""
    monkeypatch.setenv("STOMP_CHAT_DATABASE", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("STOMP_CHAT_STOMP", "none")
    options = parse()
    assert options["database"].dialect == "sqlite"
    assert options["stomp"] is None


def test_file_values_of_every_toml_type_are_accepted(config_file) -> None:
    """Strings, numbers, booleans and lists map onto options."""
    path = config_file(
        'allowed-origins = ["https://a.example", "https://b.example"]\n'
        "heartbeat = [0, 0]\nmetrics = false\ndrain-window = 1.5\n"
    )
    options = parse("--config", path)
    assert options["allowed-origins"] == ["https://a.example", "https://b.example"]
    assert options["heartbeat"] == (0, 0)
    assert options["metrics"] is False
    assert options["drain-window"] == 1.5


def test_unknown_environment_variables_with_the_prefix_are_ignored(monkeypatch) -> None:
    """Variables with the prefix that name no option (test settings, wrappers) are left alone."""
    monkeypatch.setenv("STOMP_CHAT_SOMETHING_ELSE", "1")
    with_it = dict(parse())
    monkeypatch.delenv("STOMP_CHAT_SOMETHING_ELSE")
    without = dict(parse())
    # The parsed rule set compares by identity; every other value by what it holds.
    assert with_it.pop("rules").rules == without.pop("rules").rules
    assert with_it == without


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("bogus = 1\n", "unknown option 'bogus'"),
        ("history-size = \n", "not valid TOML"),
        ("history-size = 0\n", "history-size in"),
        ('history-size = "many"\n', "must be a whole number"),
        ("heartbeat = { a = 1 }\n", "must be a string, a number"),
        ("metrics = \"perhaps\"\n", "'on' or 'off'"),
        ("drain-window = -1\n", "zero or more seconds"),
        ("log-format = \"xml\"\n", "--log-format is one of"),
        ('http = "bogus:1"\n', "--http: invalid endpoint"),
    ],
)
def test_bad_file_values_are_usage_errors(config_file, text: str, complaint: str) -> None:
    """Each bad value in the file is a usage error naming the key and what is wrong."""
    with pytest.raises(usage.UsageError, match=complaint):
        parse("--config", config_file(text))


def test_a_missing_file_is_a_usage_error(tmp_path) -> None:
    """A --config file that cannot be read is a usage error naming it."""
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse("--config", str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("STOMP_CHAT_MAX_FRAME_SIZE", "big", "environment variable STOMP_CHAT_MAX_FRAME_SIZE"),
        ("STOMP_CHAT_HEARTBEAT", "1", "environment variable STOMP_CHAT_HEARTBEAT"),
        ("STOMP_CHAT_SHUTDOWN_TIMEOUT", "0", "environment variable STOMP_CHAT_SHUTDOWN_TIMEOUT"),
        ("STOMP_CHAT_METRICS", "maybe", "environment variable STOMP_CHAT_METRICS"),
        ("STOMP_CHAT_DATABASE", "mysql://x", "--database"),
        ("STOMP_CHAT_CONFIG", "/no/such/file.toml", "cannot read"),
    ],
)
def test_bad_environment_values_are_usage_errors(
    monkeypatch, variable: str, value: str, complaint: str
) -> None:
    """A bad STOMP_CHAT_* value is a usage error naming the variable (or the option it sets)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(usage.UsageError, match=complaint):
        parse()


def test_the_drain_window_is_at_most_half_the_shutdown_timeout(monkeypatch) -> None:
    """The drain window is capped at half of --shutdown-timeout, leaving time to flush."""
    assert parse("--drain-window", "30", "--shutdown-timeout", "30")["drain-window"] == 15
    monkeypatch.setenv("STOMP_CHAT_SHUTDOWN_TIMEOUT", "4")
    assert parse()["drain-window"] == 2
    assert parse("--drain-window", "1")["drain-window"] == 1
