"""Password hashing (argon2-cffi's Argon2id) and verification off the reactor thread.

Argon2 is deliberately slow and memory-hard; a check takes tens of
milliseconds of CPU, so it runs in a small thread pool of its own, never on
the reactor thread nor on the database pool (SQLite's has one connection).
"""

from __future__ import annotations

from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

#: Threads that verify passwords: enough to keep a burst of logins moving,
#: few enough that a flood of wrong passwords cannot take every core.
DEFAULT_VERIFY_THREADS = 2

#: Argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): argon2-cffi's
#: default (64 MiB, 3 passes, 4 lanes) cost about 150 ms of CPU per login here, so a
#: reconnect storm of a few hundred clients would queue for a minute. Hashes carry their
#: parameters, so stronger ones made elsewhere still verify.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

#: Verified against when the user does not exist, so that an unknown name
#: costs as long as a wrong password and does not reveal who has an account.
_UNKNOWN_USER_HASH = _HASHER.hash("no such user: this hash never matches a real password")


def hash_password(password: str) -> str:
    """An Argon2id hash in the PHC string format (salt and parameters included)."""
    if not password:
        raise ValueError("the password is empty")
    return _HASHER.hash(password)


def check_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; ``None`` (no such user) costs the same and fails."""
    try:
        return _HASHER.verify(password_hash or _UNKNOWN_USER_HASH, password) and bool(
            password_hash
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class PasswordVerifier(Service):
    """Runs ``check_password`` in a dedicated thread pool, started and stopped with it."""

    name = "password-verifier"

    def __init__(self, reactor: Any, threads: int = DEFAULT_VERIFY_THREADS) -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="password-verifier")

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()

    def verify(self, password_hash: str | None, password: str) -> Deferred[bool]:
        return deferToThreadPool(self._reactor, self.pool, check_password, password_hash, password)
