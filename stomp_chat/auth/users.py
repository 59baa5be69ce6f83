"""The ``users`` table: who may log in with ``--auth password``, and with which roles.

The queries take a DB-API cursor (or an adbapi transaction, which behaves as
one), so the server runs them through its adbapi pool and ``stomp-chat-admin``
runs the very same ones over a plain connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from stomp_chat.persistence._dialect import Dialect, dialect_of
from stomp_chat.persistence.transactions import Runner

#: What a user name may be: it names the user in logs, ``user-name`` headers
#: and ``/user/{name}/queue/...`` destinations, so no slashes or spaces.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")


class UserExists(ValueError):
    """A user of that name exists already."""


class UnknownUser(KeyError):
    """No user of that name."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    password_hash: str
    roles: frozenset[str]
    created_at: datetime


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise ValueError(
            f"invalid user name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_roles(roles: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    for role in roles:
        if not ROLE_NAME.match(role):
            raise ValueError(f"invalid role {role!r}: lower-case letters, digits, '_' or '-'")
    return frozenset(roles)


def _row_to_user(dialect: Dialect, row: Any) -> User:
    user_id, name, password_hash, roles, created_at = row
    return User(
        int(user_id),
        name,
        password_hash,
        frozenset(role for role in roles.split(",") if role),
        dialect.time_from_db(created_at),
    )


_COLUMNS = "id, name, password_hash, roles, created_at"


def find_user(cursor: Any, dialect: Dialect, name: str) -> User | None:
    cursor.execute(dialect.sql(f"SELECT {_COLUMNS} FROM users WHERE name = ?"), (name,))
    row = cursor.fetchone()
    return None if row is None else _row_to_user(dialect, row)


def list_users(cursor: Any, dialect: Dialect) -> list[User]:
    cursor.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name")
    return [_row_to_user(dialect, row) for row in cursor.fetchall()]


def add_user(
    cursor: Any,
    dialect: Dialect,
    name: str,
    password_hash: str,
    roles: frozenset[str] = frozenset(),
    now: datetime | None = None,
) -> User:
    check_user_name(name)
    roles = check_roles(roles)
    if find_user(cursor, dialect, name) is not None:
        raise UserExists(f"user {name!r} exists already")
    created = now or datetime.now(UTC)
    cursor.execute(
        dialect.sql(
            "INSERT INTO users (name, password_hash, roles, created_at) VALUES (?, ?, ?, ?)"
        ),
        (name, password_hash, ",".join(sorted(roles)), dialect.time_to_db(created)),
    )
    user = find_user(cursor, dialect, name)
    assert user is not None
    return user


def set_password(cursor: Any, dialect: Dialect, name: str, password_hash: str) -> None:
    cursor.execute(
        dialect.sql("UPDATE users SET password_hash = ? WHERE name = ?"), (password_hash, name)
    )
    if cursor.rowcount == 0:
        raise UnknownUser(name)


def remove_user(cursor: Any, dialect: Dialect, name: str) -> None:
    cursor.execute(dialect.sql("DELETE FROM users WHERE name = ?"), (name,))
    if cursor.rowcount == 0:
        raise UnknownUser(name)


class UserStore:
    """The server's read side of the users table, through its adbapi pool; with a
    `timeout`, a look-up fails with DatabaseTimeout past it, so a silent database never
    holds a login."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: str | None = None,
        *,
        timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        #: For tools and tests that change the table the server reads.
        self.pool = pool
        self._run = Runner(pool, timeout, clock)
        self._dialect = dialect_of(pool, dialect)

    def find(self, name: str) -> Deferred[User | None]:
        found: Deferred[User | None] = self._run(find_user, self._dialect, name)
        return found
