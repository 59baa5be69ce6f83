"""What differs between SQLite and PostgreSQL once the SQL text is shared."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from stomp_chat.persistence.url import DialectName

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def sqlite_time(moment: datetime) -> str:
    """Fixed-width UTC text, e.g. ``2024-05-01T12:00:00.123456Z`` (SQLite has no time type;
    this form sorts correctly). isoformat is several times cheaper than strftime and, unlike
    it, pads years below 1000 to four digits, so every stored time parses back."""
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None:
            raise ValueError(f"refusing to store a naive datetime: {moment!r}")
        moment = moment.astimezone(UTC)
    # An aware time always ends in "+00:00" here; swap it for the "Z" SQLite rows have.
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def epoch_microseconds(moment: datetime) -> int:
    """Microseconds since 1970-01-01 UTC, exactly (no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError(f"refusing to store a naive datetime: {moment!r}")
    return (moment - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Dialect:
    """SQL is written once with ``?`` placeholders; this adapts it and the values it binds."""

    name: DialectName

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgresql"

    def sql(self, query: str) -> str:
        """Translate ``?`` placeholders to the driver's paramstyle."""
        if not self.is_postgres:
            return query
        if "%" in query:
            # psycopg2 would read a literal percent sign as the start of a placeholder.
            raise ValueError(f"shared SQL must not contain '%': {query!r}")
        return query.replace("?", "%s")

    def time_to_db(self, moment: datetime) -> Any:
        """SQLite has no time type: store fixed-width UTC text, which also sorts correctly."""
        if self.is_postgres:
            if moment.tzinfo is None:
                raise ValueError(f"refusing to store a naive datetime: {moment!r}")
            return moment
        return sqlite_time(moment)

    def time_from_db(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromisoformat(value).astimezone(UTC)


def dialect_of(pool: object, dialect: str | None) -> Dialect:
    """The explicit dialect, else the one a `ChatConnectionPool` remembers."""
    name = dialect if dialect is not None else getattr(pool, "dialect", None)
    if name is None:
        raise ValueError("pass the dialect: this connection pool does not say which it is")
    return dialect_named(name)


def dialect_named(name: str) -> Dialect:
    if name not in ("sqlite", "postgresql"):
        raise ValueError(f"unknown database dialect {name!r}; expected 'sqlite' or 'postgresql'")
    return Dialect(name)  # type: ignore[arg-type]
