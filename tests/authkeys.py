"""Keys and tokens for the authentication tests."""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = b"0123456789abcdef0123456789abcdef-test-secret"


@cache
def rsa_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key: Any) -> bytes:
    return bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_secret(directory: Path, secret: bytes = SECRET) -> Path:
    path = directory / "jwt.secret"
    path.write_bytes(secret + b"\n")
    return path


def write_public_key(directory: Path, private_key: Any) -> Path:
    path = directory / "jwt.pub.pem"
    path.write_bytes(public_pem(private_key))
    return path


def claims(sub: str = "alice", lifetime: float = 600, now: float | None = None,
           **extra: Any) -> dict[str, Any]:
    issued = time.time() if now is None else now
    return {"sub": sub, "iat": int(issued), "exp": int(issued + lifetime), **extra}


def hs256(payload: dict[str, Any], secret: bytes = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def rs256(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, rsa_private_key(), algorithm="RS256")
