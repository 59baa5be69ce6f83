"""Unit tests for stomp_chat.auth.passwords: Argon2id hashes and the verifying pool."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted

from stomp_chat.auth.passwords import PasswordVerifier, check_password, hash_password


def test_hash_is_argon2id_and_never_the_password():
    """A hash is an Argon2id PHC string, salted (two hashes differ), never holding the text."""
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("$argon2id$")
    assert first != second
    assert "correct horse" not in first


def test_check_password_right_and_wrong():
    """The right password matches; a wrong one, a garbled hash or no user does not."""
    stored = hash_password("correct horse")
    assert check_password(stored, "correct horse")
    assert not check_password(stored, "Correct horse")
    assert not check_password("not-a-hash", "correct horse")
    assert not check_password(None, "correct horse")


def test_empty_password_cannot_be_hashed():
    """An empty password is refused at hashing time."""
    with pytest.raises(ValueError):
        hash_password("")


@pytest_twisted.ensureDeferred
async def test_verifier_runs_off_the_reactor_thread_in_its_own_pool(monkeypatch):
    """verify() runs in the verifier's own threads, not the reactor's, and reports the result."""
    from twisted.internet import reactor

    import stomp_chat.auth.passwords as passwords

    threads: list[str] = []
    real = passwords.check_password

    def recording(password_hash, password):
        threads.append(threading.current_thread().name)
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "check_password", recording)
    verifier = PasswordVerifier(reactor, threads=1)
    verifier.startService()
    try:
        stored = hash_password("correct horse")
        assert await verifier.verify(stored, "correct horse") is True
        assert await verifier.verify(stored, "wrong") is False
    finally:
        verifier.stopService()
    assert len(threads) == 2
    assert all("password-verifier" in name for name in threads), threads
    assert threading.current_thread().name not in threads
