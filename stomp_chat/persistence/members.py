"""The members table: people by id and by unique name, with their password hashes.

Apart from the rooms they join because a member exists without any: created by name (a
person registering) or from a bare id the chat has seen, which must never take a person's
name, and looked up by either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.model import Member
from stomp_chat.persistence.transactions import (
    advance_id_sequence,
    execute,
    fetch_one,
    insert_with_new_id,
)


class MemberNotFound(LookupError):
    def __init__(self, member_id: int) -> None:
        super().__init__(f"no member with id {member_id}")
        self.member_id = member_id


class MemberNameTaken(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"the member name {name!r} is taken")
        self.name = name


def member_name_candidates(member_id: int) -> Iterator[str]:
    """Names for a member created from a bare id; later ones only if a person took the first."""
    yield str(member_id)
    yield f"member-{member_id}"
    attempt = 2
    while True:
        yield f"member-{member_id}-{attempt}"
        attempt += 1


def check_member_name(name: str) -> None:
    if not name:
        raise ValueError("a member name must not be empty")


_MEMBER_COLUMNS = "id, name, created_at"


def member_from_row(dialect: Dialect, row: Sequence[Any]) -> Member:
    """The member of a row that starts with its id, name and created_at."""
    return Member(int(row[0]), row[1], dialect.time_from_db(row[2]))


# -- transaction functions (run in the pool's threads) ----------------------------------------


def create_member(
    transaction: Any,
    dialect: Dialect,
    name: str,
    password_hash: str | None,
    created_at: datetime,
) -> Member:
    def explain_conflict() -> None:
        if get_member_by_name(transaction, dialect, name) is not None:
            raise MemberNameTaken(name)

    new_id = insert_with_new_id(
        transaction,
        dialect,
        "INSERT INTO members (name, password_hash, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING RETURNING id",
        (name, password_hash, dialect.time_to_db(created_at)),
        explain_conflict,
    )
    return Member(new_id, name, created_at.astimezone(UTC))


def get_member(transaction: Any, dialect: Dialect, member_id: int) -> Member | None:
    row = fetch_one(
        transaction, dialect, f"SELECT {_MEMBER_COLUMNS} FROM members WHERE id = ?", (member_id,)
    )
    return None if row is None else member_from_row(dialect, row)


def get_member_by_name(transaction: Any, dialect: Dialect, name: str) -> Member | None:
    row = fetch_one(
        transaction, dialect, f"SELECT {_MEMBER_COLUMNS} FROM members WHERE name = ?", (name,)
    )
    return None if row is None else member_from_row(dialect, row)


def get_member_credentials(
    transaction: Any, dialect: Dialect, name: str
) -> tuple[Member, str | None] | None:
    row = fetch_one(
        transaction,
        dialect,
        f"SELECT {_MEMBER_COLUMNS}, password_hash FROM members WHERE name = ?",
        (name,),
    )
    return None if row is None else (member_from_row(dialect, row), row[3])


def ensure_member(
    transaction: Any, dialect: Dialect, member_id: int, created_at: datetime
) -> Member:
    stored_time = dialect.time_to_db(created_at)
    for name in member_name_candidates(member_id):
        member = get_member(transaction, dialect, member_id)
        if member is not None:
            return member
        execute(
            transaction,
            dialect,
            "INSERT INTO members (id, name, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING RETURNING id",
            (member_id, name, stored_time),
        )
        if transaction.fetchall():
            advance_id_sequence(transaction, dialect, "members")
            return Member(member_id, name, created_at.astimezone(UTC))
    raise AssertionError("unreachable: the name candidates never run out")
