"""Tests for stomp_chat.admin.cli, the ``stomp-chat-admin`` console script, against SQLite
and the real PostgreSQL."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

import stomp_chat
from stomp_chat.admin.cli import main
from stomp_chat.auth.passwords import check_password

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]


def database_url(database: TestDatabase) -> str:
    config = database.config
    if config.dialect == "sqlite":
        return f"sqlite:///{config.database}"
    search_path = quote(config.options["options"], safe="")
    return (f"postgresql://{config.user}@{config.host}:{config.port}/{config.database}"
            f"?options={search_path}")


def admin(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), io.StringIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def test_round_trip(database: TestDatabase) -> None:
    """add, list, passwd and remove work against the server's database, hashing passwords."""
    db = f"--database={database_url(database)}"
    assert admin(db, "user", "add", "root", "--role", "admin", "--password-stdin",
                 stdin="first secret\n") == (0, "added user root\n", "")
    assert admin(db, "user", "add", "--password-stdin", "bob", stdin="bob's secret\n")[0] == 0
    code, listing, _ = admin(db, "user", "list")
    assert code == 0
    rows = [line.split("\t") for line in listing.splitlines()]
    assert [(name, roles) for name, roles, _ in rows] == [("bob", "-"), ("root", "admin")]
    [(stored,)] = database.query("SELECT password_hash FROM users WHERE name = 'root'")
    assert stored.startswith("$argon2id$") and check_password(stored, "first secret")
    assert admin(db, "user", "passwd", "root", "--password-stdin", stdin="second secret\n")[0] \
        == 0
    [(stored,)] = database.query("SELECT password_hash FROM users WHERE name = 'root'")
    assert check_password(stored, "second secret") and not check_password(stored, "first secret")
    assert admin(db, "user", "remove", "bob") == (0, "removed user bob\n", "")
    assert [row[0] for row in database.query("SELECT name FROM users")] == ["root"]


def test_failures_are_reported_without_tracebacks(sqlite_database: TestDatabase) -> None:
    """Duplicate and unknown users, weak passwords and bad input exit non-zero with a message."""
    db = f"--database={database_url(sqlite_database)}"
    admin(db, "user", "add", "alice", "--password-stdin", stdin="long enough\n")
    cases = [
        ((db, "user", "add", "alice", "--password-stdin"), "long enough\n", 1, "exists already"),
        ((db, "user", "remove", "nobody"), "", 1, "no user named 'nobody'"),
        ((db, "user", "passwd", "nobody", "--password-stdin"), "long enough\n", 1, "no user"),
        ((db, "user", "add", "bob", "--password-stdin"), "short\n", 1, "at least 8"),
        ((db, "user", "add", "bob"), "", 2, "use --password-stdin"),
        ((db, "user", "add", "bad/name", "--password-stdin"), "", 2, "invalid user name"),
        ((db, "user", "add", "bob", "--role", "Admin"), "", 2, "invalid role"),
        ((db, "user", "add"), "", 2, "Wrong number of arguments"),
        ((db, "user", "frob"), "", 2, "Unknown command"),
        ((db,), "", 2, "say what to manage"),
        (("--database=mysql://x/y", "user", "list"), "", 2, "--database:"),
    ]
    for args, stdin, code, message in cases:
        got, out, err = admin(*args, stdin=stdin)
        assert (got, out) == (code, ""), (args, err)
        assert message in err and "Traceback" not in err, (args, err)


def test_unreachable_database_is_a_clean_error() -> None:
    """A database that cannot be reached is one line on stderr and exit 1."""
    code, _, err = admin("--database=postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
                         "user", "list")
    assert code == 1
    assert "OperationalError" in err and "Traceback" not in err


def test_password_prompt_asks_twice(monkeypatch: pytest.MonkeyPatch,
                                    sqlite_database: TestDatabase) -> None:
    """Without --password-stdin on a terminal the password is typed twice and must agree."""
    from stomp_chat.admin import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["typed password", "typed password", "one password", "another one"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(answers))
    db = f"--database={database_url(sqlite_database)}"
    out, err = io.StringIO(), io.StringIO()
    assert main([db, "user", "add", "dave"], Terminal(), out, err) == 0
    assert main([db, "user", "passwd", "dave"], Terminal(), out, err) == 1
    assert "the passwords differ" in err.getvalue()


def test_config_file_names_the_database(tmp_path: Path) -> None:
    """--config reads the server's TOML file (its other keys are accepted) for the database."""
    db_path = tmp_path / "from-config.db"
    config = tmp_path / "chat.toml"
    config.write_text(f'database = "sqlite:///{db_path}"\nhttp = "tcp:0"\nauth = "password"\n')
    assert admin("--config", str(config), "user", "add", "eve", "--password-stdin",
                 stdin="eve's password\n")[0] == 0
    assert db_path.exists()
    assert admin(f"--config={config}", "user", "list")[1].startswith("eve\t")
    bad = tmp_path / "bad.toml"
    bad.write_text('no_such_option = 1\n')
    code, _, err = admin("--config", str(bad), "user", "list")
    assert code == 2 and "unknown option" in err


def test_help_runs_as_a_program() -> None:
    """The console script's module prints its help and exits 0."""
    root = str(Path(stomp_chat.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    result = subprocess.run([sys.executable, "-m", "stomp_chat.admin.cli", "--help"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0
    assert "stomp-chat-admin" in result.stdout and "user" in result.stdout
    result = subprocess.run([sys.executable, "-m", "stomp_chat.admin.cli", "user", "--help"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0 and "passwd" in result.stdout


def test_environment_names_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STOMP_CHAT_DATABASE sets the database as it does for the server; --database wins."""
    from_env = tmp_path / "from-env.db"
    monkeypatch.setenv("STOMP_CHAT_DATABASE", f"sqlite:///{from_env}")
    assert admin("user", "add", "fay", "--password-stdin", stdin="fay's password\n")[0] == 0
    assert from_env.exists()
    explicit = tmp_path / "explicit.db"
    assert admin(f"--database=sqlite:///{explicit}", "user", "list") == (0, "", "")
    assert explicit.exists()


def test_console_script_is_declared() -> None:
    """pyproject.toml installs stomp-chat-admin, pointing at this module's main()."""
    import tomllib

    pyproject = Path(stomp_chat.__file__).resolve().parent.parent / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["stomp-chat-admin"] == "stomp_chat.admin.cli:main"


def _messages_aged(database: TestDatabase, ages_in_days: dict[tuple[int, int], float]) -> None:
    """Store messages (room, seq) created the given number of days ago."""
    from datetime import UTC, datetime, timedelta

    from stomp_chat.persistence import migrate_blocking
    from stomp_chat.persistence._dialect import dialect_named
    from stomp_chat.persistence.url import open_connection

    migrate_blocking(database.config)
    dialect = dialect_named(database.config.dialect)
    now = datetime.now(UTC)
    connection = open_connection(database.config)
    try:
        cursor = connection.cursor()
        for room in sorted({room for room, _ in ages_in_days}):
            cursor.execute(dialect.sql("INSERT INTO rooms (id, name, created_at) VALUES (?, ?, ?)"),
                           (room, f"room {room}", dialect.time_to_db(now)))
        for (room, seq), age in ages_in_days.items():
            cursor.execute(
                dialect.sql("INSERT INTO messages (room_id, seq, message_id, type, sender_id, "
                            "text, created_at) VALUES (?, ?, ?, 'TALK', 1, 'x', ?)"),
                (room, seq, f"{room}-{seq}", dialect.time_to_db(now - timedelta(days=age))),
            )
        connection.commit()
    finally:
        connection.close()


def test_messages_purge_deletes_old_messages_in_batches(database: TestDatabase) -> None:
    """messages purge --older-than removes older messages in batches, keeping newer ones and
    each room's newest, and says how many went."""
    ages = {(1, seq): 40.0 for seq in range(1, 8)}
    ages.update({(1, 8): 1.0, (2, 1): 50.0})
    _messages_aged(database, ages)
    db = f"--database={database_url(database)}"
    assert admin(db, "messages", "purge", "--older-than", "30", "--batch", "3") == (
        0, "removed 7 message(s) older than 30 days\n", "")
    rows = database.query("SELECT room_id, seq FROM messages ORDER BY room_id, seq")
    assert [(int(room), int(seq)) for room, seq in rows] == [(1, 8), (2, 1)]
    assert admin(db, "messages", "purge", "--older-than", "0.5") == (
        0, "removed 0 message(s) older than 0.5 days\n", "")


def test_messages_purge_refuses_bad_input(sqlite_database: TestDatabase) -> None:
    """A missing, non-numeric or non-positive age, or a zero batch, is a usage error (2)."""
    db = f"--database={database_url(sqlite_database)}"
    cases = [
        (("messages", "purge"), "--older-than DAYS"),
        (("messages", "purge", "--older-than", "soon"), "not a number"),
        (("messages", "purge", "--older-than", "0"), "positive"),
        (("messages", "purge", "--older-than", "nan"), "positive"),
        (("messages", "purge", "--older-than", "3", "--batch", "0"), "at least 1"),
        (("messages",), "say what to do: purge"),
    ]
    for args, expected in cases:
        code, out, err = admin(db, *args)
        assert code == 2 and out == "" and expected in err, (args, err)
        assert "Traceback" not in err
