"""Unit tests for stomp_chat.auth.tokens: JWT verification and login tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.task import Clock

from stomp_chat.auth.tokens import (
    JwtVerifier,
    KeyFileError,
    LoginTokens,
    TokenRejected,
    VerificationKey,
    load_public_key_file,
    load_secret_file,
    looks_like_jwt,
)
from stomp_chat.identity import AUTH_JWT, AUTH_PASSWORD, Principal
from tests.authkeys import (
    SECRET,
    claims,
    ec_private_key,
    hs256,
    public_pem,
    rs256,
    rsa_private_key,
    write_public_key,
    write_secret,
)

NOW = 1_800_000_000.0


def clock_at(seconds: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def hs_verifier(**kwargs) -> JwtVerifier:
    return JwtVerifier(VerificationKey(SECRET, ("HS256",)), clock_at(), **kwargs)


def rs_verifier(tmp_path: Path, **kwargs) -> JwtVerifier:
    return JwtVerifier(load_public_key_file(str(write_public_key(tmp_path, rsa_private_key()))),
                       clock_at(), **kwargs)


def test_valid_hs256_token_gives_the_principal():
    """A valid HS256 token yields sub as the user id, the name claim, roles, and the expiry
    (exp plus the tolerated clock skew) at which the session must end."""
    token = hs256(claims("u-1", now=NOW, name="Alice", roles=["admin", "ops"]))
    principal = hs_verifier(leeway=0).verify(token)
    assert principal == Principal("u-1", "Alice", frozenset({"admin", "ops"}), AUTH_JWT,
                                  expires_at=NOW + 600)
    assert hs_verifier(leeway=30).verify(token).expires_at == NOW + 630
    assert principal.claims["sub"] == "u-1"


def test_name_falls_back_to_sub_and_claims_are_configurable():
    """Without the name claim the name is sub; other name and roles claims can be chosen."""
    assert hs_verifier().verify(hs256(claims("u-2", now=NOW))).name == "u-2"
    token = hs256(claims("u-3", now=NOW, preferred_username="bob", scope="read write"))
    principal = hs_verifier(name_claim="preferred_username", roles_claim="scope").verify(token)
    assert principal.name == "bob"
    assert principal.roles == frozenset({"read", "write"})


@pytest.mark.parametrize("subject", ["a\x00b", "\ud800", "eve\nversion:1.0", "tab\there"])
def test_a_sub_that_is_not_printable_text_is_refused(subject: str):
    """A sub holding NUL, a lone surrogate or a line break is refused: it would break the
    CONNECTED frame's user-name header, or the database that stores members."""
    with pytest.raises(TokenRejected, match="sub"):
        hs_verifier().verify(hs256(claims(subject, now=NOW)))


@pytest.mark.parametrize("name", ["x\ny", "x\x00", "\udfff"])
def test_a_name_that_is_not_printable_text_falls_back_to_sub(name: str):
    """A display name holding a line break, NUL or a lone surrogate is not used: the
    principal's name is its sub, so no header can be injected into CONNECTED."""
    assert hs_verifier().verify(hs256(claims("u-4", now=NOW, name=name))).name == "u-4"


def test_valid_rs256_and_es256_tokens_verify(tmp_path: Path):
    """RS256 tokens verify against an RSA public key, ES256 against an EC P-256 key."""
    assert rs_verifier(tmp_path).verify(rs256(claims("r", now=NOW))).user_id == "r"
    key = load_public_key_file(str(write_public_key(tmp_path, ec_private_key())))
    assert key.algorithms == ("ES256",)
    token = jwt.encode(claims("e", now=NOW), ec_private_key(), algorithm="ES256")
    assert JwtVerifier(key, clock_at()).verify(token).user_id == "e"


def test_expired_token_is_refused():
    """A token whose exp (plus the leeway) has passed on the server's clock is refused."""
    token = hs256(claims(now=NOW - 700, lifetime=600))
    with pytest.raises(TokenRejected, match="expired"):
        hs_verifier(leeway=0).verify(token)
    # within the leeway it is still taken
    assert hs_verifier(leeway=200).verify(token).user_id == "alice"


def test_token_not_yet_valid_is_refused():
    """A token whose nbf lies in the future (beyond the leeway) is refused."""
    token = hs256(claims(now=NOW, nbf=int(NOW + 120)))
    with pytest.raises(TokenRejected, match="not yet valid"):
        hs_verifier(leeway=30).verify(token)
    assert hs_verifier(leeway=300).verify(token).user_id == "alice"


def test_wrong_signature_is_refused(tmp_path: Path):
    """A token signed with another secret, or another RSA key, is refused."""
    with pytest.raises(TokenRejected, match="Signature"):
        hs_verifier().verify(hs256(claims(now=NOW), secret=b"x" * 40))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenRejected, match="Signature"):
        rs_verifier(tmp_path).verify(jwt.encode(claims(now=NOW), other, algorithm="RS256"))


def test_tampered_payload_is_refused():
    """Changing the payload of a signed token breaks it."""
    header, payload, signature = hs256(claims("alice", now=NOW)).split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims("admin", now=NOW)).encode()).rstrip(b"=")
    with pytest.raises(TokenRejected):
        hs_verifier().verify(f"{header}.{forged.decode()}.{signature}")


def test_audience_and_issuer_are_checked_when_configured():
    """With --jwt-audience/--jwt-issuer a token must carry exactly those; a missing one fails."""
    verifier = hs_verifier(audience="chat", issuer="https://id.example")
    good = hs256(claims(now=NOW, aud="chat", iss="https://id.example"))
    assert verifier.verify(good).user_id == "alice"
    for bad in (
        claims(now=NOW, aud="other", iss="https://id.example"),
        claims(now=NOW, aud="chat", iss="https://evil.example"),
        claims(now=NOW, iss="https://id.example"),
        claims(now=NOW, aud="chat"),
    ):
        with pytest.raises(TokenRejected):
            verifier.verify(hs256(bad))


def test_alg_none_is_refused(tmp_path: Path):
    """An unsigned token (alg: none) is refused by HS256 and RS256 verifiers alike."""
    unsigned = jwt.encode(claims(now=NOW), None, algorithm="none")
    assert unsigned.endswith(".")
    for verifier in (hs_verifier(), rs_verifier(tmp_path)):
        with pytest.raises(TokenRejected):
            verifier.verify(unsigned)


def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path):
    """Algorithm confusion: an HS256 token whose HMAC key is the server's RSA public key
    (which an attacker knows) does not verify."""
    pem = public_pem(rsa_private_key())
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims(now=NOW)).encode()).rstrip(b"=")
    signing_input = header + b"." + body
    signature = base64.urlsafe_b64encode(
        hmac.new(pem, signing_input, hashlib.sha256).digest()
    ).rstrip(b"=")
    forged = (signing_input + b"." + signature).decode()
    with pytest.raises(TokenRejected, match="alg value is not allowed"):
        rs_verifier(tmp_path).verify(forged)


def test_tokens_without_sub_or_exp_are_refused():
    """sub and exp are required: a token that never expires, or names nobody, is refused."""
    with pytest.raises(TokenRejected):
        hs_verifier().verify(hs256({"sub": "alice"}))
    with pytest.raises(TokenRejected):
        hs_verifier().verify(hs256({"exp": int(NOW + 60)}))
    with pytest.raises(TokenRejected):
        hs_verifier().verify(hs256({"sub": 7, "exp": int(NOW + 60)}))
    with pytest.raises(TokenRejected):
        hs_verifier().verify("not a token")


def test_secret_file_is_read_and_short_secrets_refused(tmp_path: Path):
    """A secret file gives an HS256-only key without its newline; short or missing files fail."""
    key = load_secret_file(str(write_secret(tmp_path)))
    assert key == VerificationKey(SECRET, ("HS256",))
    with pytest.raises(KeyFileError, match="at least 32"):
        load_secret_file(str(write_secret(tmp_path, b"short")))
    with pytest.raises(KeyFileError, match="cannot read"):
        load_secret_file(str(tmp_path / "missing"))


def test_public_key_file_picks_the_algorithm_from_the_key(tmp_path: Path):
    """An RSA key verifies RS256 only, an EC P-256 key ES256 only; junk and short RSA fail."""
    assert load_public_key_file(str(write_public_key(tmp_path, rsa_private_key()))).algorithms \
        == ("RS256",)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key_file(str(junk))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyFileError, match="too short"):
        load_public_key_file(str(write_public_key(tmp_path, weak)))
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert load_public_key_file(str(write_public_key(tmp_path, p384))).algorithms == ("ES384",)


def test_login_tokens_round_trip_and_expire():
    """A login token verifies to the same user until its lifetime ends on the clock."""
    clock = clock_at()
    tokens = LoginTokens(clock, lifetime=60)
    alice = Principal("alice", "alice", frozenset({"admin"}), AUTH_PASSWORD)
    token, expires = tokens.issue(alice)
    assert expires == NOW + 60
    verified = tokens.verify(token)
    assert (verified.user_id, verified.roles, verified.method) == ("alice", {"admin"},
                                                                   AUTH_PASSWORD)
    clock.advance(61)
    with pytest.raises(TokenRejected, match="expired"):
        tokens.verify(token)


def test_login_tokens_of_another_process_or_purpose_are_refused():
    """A token signed with another secret, or an HS256 token without the login audience, fails."""
    alice = Principal("alice", "alice")
    other_token, _ = LoginTokens(clock_at()).issue(alice)
    with pytest.raises(TokenRejected):
        LoginTokens(clock_at()).verify(other_token)
    shared = LoginTokens(clock_at(), SECRET)
    with pytest.raises(TokenRejected):
        shared.verify(hs256(claims(now=NOW)))  # same secret, but no login iss/aud


def test_looks_like_jwt():
    """Three dot-separated parts look like a token; passwords usually do not."""
    assert looks_like_jwt(hs256(claims()))
    assert not looks_like_jwt("correct horse battery staple")
