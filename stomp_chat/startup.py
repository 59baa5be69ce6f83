"""Checks made once before the reactor runs, so a server that cannot work never starts.

They block, on purpose: they run in ``makeService``, before ``twistd``
daemonises, so their one-line message reaches the terminal and the exit
status is non-zero in daemon mode as in ``-n``.
"""

from __future__ import annotations

import socket

from twisted.logger import Logger

from stomp_chat.cluster import RedisAddress
from stomp_chat.lifecycle import StartupError
from stomp_chat.persistence import DatabaseConfig, migrate_blocking

log = Logger()

#: How long start-up waits for Redis to answer PING.
REDIS_CHECK_TIMEOUT = 5.0


class RedisCheckFailed(Exception):
    """Redis did not answer as a usable Redis."""


def _command(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded
    )


def check_redis(address: RedisAddress, timeout: float = REDIS_CHECK_TIMEOUT) -> None:
    """AUTH (if a password is set), SELECT (if a db is set) and PING; raise if any fails."""
    commands = []
    if address.password:
        commands.append(_command("AUTH", address.password))
    if address.db is not None:
        commands.append(_command("SELECT", str(address.db)))
    commands.append(_command("PING"))
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            reader = sock.makefile("rb")
            for command in commands:
                sock.sendall(command)
                line = reader.readline()
                if not line:
                    raise RedisCheckFailed("the connection was closed")
                if line.startswith(b"-"):
                    raise RedisCheckFailed(line[1:].decode(errors="replace").strip())
    except TimeoutError:
        raise RedisCheckFailed(f"no answer within {timeout:g}s") from None
    except OSError as error:
        raise RedisCheckFailed(error.strerror or str(error)) from None


def migrate_before_start(database: DatabaseConfig) -> int:
    """Bring the schema up to date once, or stop with the reason; returns its version."""
    try:
        version = migrate_blocking(database)
    except Exception as error:  # any driver error: the message is what matters here
        reason = " ".join(str(error).split())  # drivers' messages span lines
        raise StartupError(f"the database {database.redacted()} is not usable: {reason}") from None
    log.info("database schema at version {version}", version=version)
    return version


def redis_before_start(address: RedisAddress) -> None:
    """Make sure cluster mode's Redis answers, or stop with the reason."""
    try:
        check_redis(address)
    except RedisCheckFailed as error:
        raise StartupError(f"--redis {address.redacted()} is not usable: {error}") from None
