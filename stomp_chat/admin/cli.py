"""``stomp-chat-admin``: manage users (add, list, remove, passwd) and purge old messages.

It reads the same ``--database``/``--config`` as the server (the config file
is parsed by the server's own code), migrates the schema if needed, and runs
the same queries the server does, over a plain database connection.
"""

from __future__ import annotations

import getopt
import getpass
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from twisted.python import usage

from stomp_chat.auth.passwords import hash_password
from stomp_chat.auth.users import (
    UnknownUser,
    UserExists,
    add_user,
    check_roles,
    check_user_name,
    list_users,
    remove_user,
    set_password,
)
from stomp_chat.persistence import DatabaseConfig, migrate_blocking, parse_database_url
from stomp_chat.persistence._dialect import Dialect, dialect_named
from stomp_chat.persistence.purge import delete_old_messages
from stomp_chat.persistence.url import open_connection
from stomp_chat.retention import DEFAULT_RETENTION_BATCH

#: Shorter passwords are refused: Argon2 slows guessing, it cannot save "1234".
MIN_PASSWORD_LENGTH = 8


class _Interspersed(usage.Options):
    """Options may follow the positional arguments (``user add NAME --role admin``)."""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            opts, args = getopt.gnu_getopt(list(options or ()), self.shortOpt, self.longOpt)
        except getopt.GetoptError as error:
            raise usage.UsageError(str(error)) from None
        flat = []
        for opt, value in opts:
            takes_value = (opt[2:] + "=") in self.longOpt if opt.startswith("--") else (
                opt[1:] + ":" in self.shortOpt
            )
            flat.append(f"{opt}={value}" if takes_value and opt.startswith("--") else
                        opt + value if takes_value else opt)
        super().parseOptions([*flat, "--", *args])


class _PasswordOptions(_Interspersed):
    optFlags = [["password-stdin", None, "Read the password from the first line of stdin."]]


class AddOptions(_PasswordOptions):
    synopsis = "NAME [--role ROLE]... [--password-stdin]"
    description = "Add a user; the password is prompted for unless --password-stdin is given."

    def __init__(self) -> None:
        super().__init__()
        self["roles"] = []

    def opt_role(self, role: str) -> None:
        """A role of the user (repeat for several), e.g. --role admin."""
        self["roles"].append(role.strip())

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name

    def postOptions(self) -> None:
        try:
            check_user_name(self["name"])
            self["roles"] = check_roles(self["roles"])
        except ValueError as error:
            raise usage.UsageError(str(error)) from None


class NameOptions(_Interspersed):
    synopsis = "NAME"

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class PasswdOptions(NameOptions, _PasswordOptions):
    synopsis = "NAME [--password-stdin]"


class ListOptions(_Interspersed):
    synopsis = ""


class UserOptions(usage.Options):
    synopsis = "add|list|remove|passwd ..."
    subCommands = [
        ["add", None, AddOptions, "Add a user: add NAME [--role admin] [--password-stdin]"],
        ["list", None, ListOptions, "List the users and their roles."],
        ["remove", None, NameOptions, "Remove a user: remove NAME"],
        ["passwd", None, PasswdOptions, "Set a user's password: passwd NAME [--password-stdin]"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say what to do: add, list, remove or passwd")


class PurgeOptions(_Interspersed):
    synopsis = "--older-than DAYS [--batch N]"
    description = (
        "Delete messages older than DAYS days now, as --retention-days does: in batches, "
        "each its own transaction, keeping each room's newest message."
    )
    optParameters = [
        ["older-than", None, None, "Delete messages older than this many days (> 0)."],
        ["batch", None, DEFAULT_RETENTION_BATCH, "Messages deleted per transaction.", int],
    ]

    def postOptions(self) -> None:
        raw = self["older-than"]
        if raw is None:
            raise usage.UsageError("say how old: --older-than DAYS")
        try:
            days = float(raw)
        except ValueError:
            raise usage.UsageError(f"--older-than: not a number of days: {raw!r}") from None
        if not (days > 0 and math.isfinite(days)):
            raise usage.UsageError("--older-than must be a positive number of days")
        self["older-than"] = days
        if self["batch"] < 1:
            raise usage.UsageError("--batch must be at least 1")


class MessagesOptions(usage.Options):
    synopsis = "purge ..."
    subCommands = [
        ["purge", None, PurgeOptions, "Delete old messages: purge --older-than DAYS"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say what to do: purge")


def _database_url(given: str | None, config: str | None, environ: Mapping[str, str]) -> str:
    """The database the server would use: command line, environment, config file, default."""
    from stomp_chat.config import coercions, env_name, file_arguments
    from stomp_chat.tap import Options

    if given:
        return given
    if environ.get(env_name("database")):
        return environ[env_name("database")]
    path = config or environ.get(env_name("config"))
    if path:
        known = coercions(Options.optParameters, {"config"})
        for argument in file_arguments(path, known):
            if argument.startswith("--database="):
                return argument.split("=", 1)[1]
    return next(str(p[2]) for p in Options.optParameters if p[0] == "database")


class AdminOptions(usage.Options):
    synopsis = (
        "stomp-chat-admin [--config FILE | --database URL] "
        "user add|list|remove|passwd ... | messages purge ..."
    )
    longdesc = (
        "Manages the users of stomp-chat's --auth password mode, and removes old messages, "
        "in the server's database. "
        "Give the same --database or --config as the server."
    )
    optParameters = [
        ["config", "c", None, "The server's TOML config file; its database key is used."],
        ["database", None, None, "Database URL (default: the server's default)."],
    ]
    subCommands = [
        ["user", None, UserOptions, "Manage users."],
        ["messages", None, MessagesOptions, "Manage chat messages."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        from stomp_chat import __version__

        print(f"stomp-chat-admin {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say what to manage: user or messages")
        url = _database_url(self["database"], self["config"], os.environ)
        try:
            self["database"] = parse_database_url(url)
        except ValueError as error:
            raise usage.UsageError(f"--database: {error}") from None


class AdminError(Exception):
    """A command that cannot be done (a user exists already, or does not exist)."""


@contextmanager
def _transaction(config: DatabaseConfig) -> Iterator[tuple[Any, Dialect]]:
    connection = open_connection(config)
    try:
        yield connection.cursor(), dialect_named(config.dialect)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()


def read_password(
    from_stdin: bool, stdin: TextIO, prompt: Callable[[str], str] | None = None
) -> str:
    """The new password, from stdin's first line or typed twice at a prompt."""
    prompt = prompt or getpass.getpass
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    else:
        if not stdin.isatty():
            raise usage.UsageError("no terminal to ask for a password on; use --password-stdin")
        password = prompt("Password: ")
        if prompt("Again: ") != password:
            raise AdminError("the passwords differ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def purge_messages(config: DatabaseConfig, days: float, batch: int,
                   now: datetime | None = None) -> int:
    """Delete messages older than ``days`` in batches, one transaction each; how many went."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    total = 0
    while True:
        with _transaction(config) as (cursor, dialect):
            deleted = delete_old_messages(cursor, dialect, dialect.time_to_db(cutoff), batch)
        total += deleted
        if deleted < batch:
            return total


def run(options: AdminOptions, stdin: TextIO, stdout: TextIO) -> None:
    config: DatabaseConfig = options["database"]
    migrate_blocking(config)
    command, sub = options.subOptions.subCommand, options.subOptions.subOptions
    if options.subCommand == "messages":
        days = sub["older-than"]
        removed = purge_messages(config, days, sub["batch"])
        stdout.write(f"removed {removed} message(s) older than {days:g} days\n")
        return
    if command == "list":
        with _transaction(config) as (cursor, dialect):
            users = list_users(cursor, dialect)
        for user in users:
            roles = ",".join(sorted(user.roles)) or "-"
            stdout.write(f"{user.name}\t{roles}\t{user.created_at.isoformat()}\n")
        return
    name = sub["name"]
    try:
        if command == "add":
            password_hash = hash_password(read_password(sub["password-stdin"], stdin))
            with _transaction(config) as (cursor, dialect):
                add_user(cursor, dialect, name, password_hash, sub["roles"])
            stdout.write(f"added user {name}\n")
        elif command == "passwd":
            password_hash = hash_password(read_password(sub["password-stdin"], stdin))
            with _transaction(config) as (cursor, dialect):
                set_password(cursor, dialect, name, password_hash)
            stdout.write(f"changed the password of {name}\n")
        elif command == "remove":
            with _transaction(config) as (cursor, dialect):
                remove_user(cursor, dialect, name)
            stdout.write(f"removed user {name}\n")
    except UserExists:
        raise AdminError(f"user {name!r} exists already") from None
    except UnknownUser:
        raise AdminError(f"no user named {name!r}") from None


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The console script: 0 on success, 1 when the command fails, 2 on a usage error."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    options = AdminOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as error:
        stderr.write(f"stomp-chat-admin: {error}\n(see stomp-chat-admin --help)\n")
        return 2
    except SystemExit as done:  # --help
        return int(done.code or 0)
    try:
        run(options, stdin, stdout)
    except usage.UsageError as error:
        stderr.write(f"stomp-chat-admin: {error}\n")
        return 2
    except AdminError as error:
        stderr.write(f"stomp-chat-admin: {error}\n")
        return 1
    except Exception as error:  # a database that cannot be reached: say so, no traceback
        stderr.write(f"stomp-chat-admin: {type(error).__name__}: {str(error).strip()}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
