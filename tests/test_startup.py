"""Tests for stomp_chat.startup: the checks made before the server starts."""

from __future__ import annotations

import socket
import threading

import pytest

from stomp_chat.cluster import parse_redis_url
from stomp_chat.lifecycle import StartupError
from stomp_chat.persistence import parse_database_url
from stomp_chat.startup import (
    RedisCheckFailed,
    check_redis,
    migrate_before_start,
    redis_before_start,
)


def _fake_redis(replies: list[bytes]) -> tuple[int, list[bytes], threading.Thread]:
    """A one-connection server answering each command with the next reply."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            for reply in replies:
                received.append(connection.recv(4096))
                connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], received, thread


def test_check_redis_authenticates_selects_and_pings() -> None:
    """With a password and a db, the check sends AUTH, SELECT and PING, in that order."""
    port, received, thread = _fake_redis([b"+OK\r\n", b"+OK\r\n", b"+PONG\r\n"])
    check_redis(parse_redis_url(f"redis://:secret@127.0.0.1:{port}/2"), timeout=5)
    thread.join(5)
    assert [r.split(b"\r\n")[2] for r in received] == [b"AUTH", b"SELECT", b"PING"]


def test_a_refused_password_fails_the_check() -> None:
    """An error reply from Redis fails the check with Redis's own words."""
    port, _, _ = _fake_redis([b"-WRONGPASS invalid username-password pair\r\n"])
    with pytest.raises(RedisCheckFailed, match="WRONGPASS"):
        check_redis(parse_redis_url(f"redis://:bad@127.0.0.1:{port}/0"), timeout=5)


def test_a_silent_redis_fails_after_the_timeout() -> None:
    """A server that accepts but never answers fails the check once the timeout passes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = parse_redis_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        with pytest.raises(RedisCheckFailed, match="no answer within 0.3s"):
            check_redis(address, timeout=0.3)


def test_an_unreachable_redis_is_a_startup_error() -> None:
    """A refused connection becomes StartupError naming --redis and the cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StartupError) as raised:
        redis_before_start(parse_redis_url(f"redis://127.0.0.1:{port}/0"))
    assert "--redis" in str(raised.value) and "refused" in str(raised.value)


def test_an_unusable_database_is_a_one_line_startup_error(tmp_path) -> None:
    """A database that cannot be opened stops start-up with one line naming it."""
    config = parse_database_url(f"sqlite:///{tmp_path}/missing/dir/chat.db")
    with pytest.raises(StartupError) as raised:
        migrate_before_start(config)
    assert "\n" not in str(raised.value)
    assert "is not usable" in str(raised.value)
    assert str(raised.value.code).startswith("stomp-chat: cannot start: the database")


def test_a_usable_database_is_migrated_once(tmp_path) -> None:
    """A fresh database is brought to the latest version; a second check changes nothing."""
    config = parse_database_url(f"sqlite:///{tmp_path}/chat.db")
    version = migrate_before_start(config)
    assert version >= 1
    assert migrate_before_start(config) == version
