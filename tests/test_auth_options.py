"""Unit tests for stomp_chat.auth.options: modes, keys and where --auth none may listen."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from stomp_chat.auth.options import listens_beyond_loopback, unauthenticated_warning
from stomp_chat.tap import Options
from tests.authkeys import rsa_private_key, write_public_key, write_secret


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_none_is_the_default_and_listens_on_loopback():
    """Without --auth nobody is authenticated and both listeners bind 127.0.0.1."""
    options = parse()
    assert options["auth"] == "none"
    assert "interface=127.0.0.1" in options["stomp"]
    assert "interface=127.0.0.1" in options["http"]
    assert options["unauthenticated-listeners"] == []


def test_other_modes_listen_on_every_interface(tmp_path: Path):
    """--auth password and jwt default to every interface."""
    options = parse("--auth", "password")
    assert options["stomp"] == "tcp:61613:backlog=1024"
    assert options["http"] == "tcp:8080:backlog=1024"
    secret = write_secret(tmp_path)
    assert parse("--auth", "jwt", "--jwt-secret-file", str(secret))["http"] == \
        "tcp:8080:backlog=1024"


def test_none_beyond_loopback_needs_saying_so():
    """An implicit none on a public interface is a usage error; an explicit one is allowed
    and reported for the start-up warning."""
    with pytest.raises(usage.UsageError, match="--auth none"):
        parse("--http", "tcp:8080")
    options = parse("--auth", "none", "--http", "tcp:8080:interface=0.0.0.0")
    assert options["unauthenticated-listeners"] == ["http"]
    warning = unauthenticated_warning(options["unauthenticated-listeners"], options)
    assert warning is not None and "tcp:8080:interface=0.0.0.0" in warning
    assert unauthenticated_warning([], options) is None


def test_the_config_file_may_say_auth(tmp_path: Path):
    """auth and the jwt keys are config-file keys like every option."""
    secret = write_secret(tmp_path)
    config = tmp_path / "chat.toml"
    config.write_text(f'auth = "jwt"\njwt_secret_file = "{secret}"\njwt_audience = "chat"\n')
    options = parse("--config", str(config))
    assert options["auth"] == "jwt"
    assert options["jwt-audience"] == "chat"
    assert options["jwt-key"].algorithms == ("HS256",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth", "ldap"], "--auth must be one of"),
        (["--auth", "jwt"], "exactly one of"),
        (["--auth", "jwt", "--jwt-secret-file", "/nonexistent"], "--jwt-secret-file: cannot read"),
        (["--auth", "password", "--jwt-public-key-file", "/x"], "only used with --auth jwt"),
        (["--auth", "jwt", "--jwt-public-key-file", "/nonexistent"],
         "--jwt-public-key-file: cannot read"),
        (["--login-token-lifetime", "0"], "must be positive"),
        (["--auth-failure-refill", "soon"], "must be a number"),
        (["--jwt-leeway", "-1"], "must be zero or more"),
    ],
)
def test_unusable_settings_are_usage_errors(args, message):
    """Settings that cannot work are refused at start-up with a message naming the option."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_both_jwt_keys_are_refused(tmp_path: Path):
    """A secret and a public key together are ambiguous and refused."""
    secret = write_secret(tmp_path)
    public = write_public_key(tmp_path, rsa_private_key())
    with pytest.raises(usage.UsageError, match="exactly one of"):
        parse("--auth", "jwt", "--jwt-secret-file", str(secret),
              "--jwt-public-key-file", str(public))
    assert parse("--auth", "jwt", "--jwt-public-key-file", str(public))["jwt-key"].algorithms \
        == ("RS256",)


@pytest.mark.parametrize(
    ("endpoint", "public"),
    [
        ("tcp:8080", True),
        ("tcp:8080:interface=0.0.0.0", True),
        ("tcp:8080:interface=127.0.0.1", False),
        ("tcp6:8080:interface=\\:\\:1", False),
        ("tcp6:8080:interface=\\:\\:", True),
        ("ssl:443:privateKey=k.pem:interface=localhost", False),
        ("unix:/run/chat.sock", False),
        ("systemd:domain=INET:index=0", True),
    ],
)
def test_which_endpoints_reach_beyond_loopback(endpoint, public):
    """TCP/TLS endpoints are public unless bound to loopback; UNIX sockets never are."""
    assert listens_beyond_loopback(endpoint) is public
