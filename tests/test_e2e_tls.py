"""TLS: both listening endpoints take Twisted endpoint strings, so ``ssl:`` serves STOMP
over TLS and WebSocket over ``wss://``, with real clients checking the certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from pathlib import Path

import pytest
import stomp
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, valid for this test only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def tls_server(start_server, certificate, tmp_path):
    key, cert = certificate
    tls = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    return start_server(
        f"--stomp=ssl:0:{tls}", f"--http=ssl:0:{tls}", f"--database=sqlite:///{tmp_path}/tls.db"
    )


class _Inbox(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.arrived = threading.Event()

    def on_message(self, frame) -> None:
        self.bodies.append(frame.body)
        self.arrived.set()


def test_stomp_over_tls_round_trip(tls_server, certificate):
    """stomp.py connects over TLS, verifying the server certificate, and gets its message back."""
    _, cert = certificate
    connection = stomp.Connection12([("127.0.0.1", tls_server.stomp_port)])
    connection.set_ssl(for_hosts=[("127.0.0.1", tls_server.stomp_port)], ca_certs=str(cert))
    inbox = _Inbox()
    connection.set_listener("inbox", inbox)
    connection.connect(wait=True)
    try:
        connection.subscribe("/topic/tls", id="1")
        connection.send("/topic/tls", "비밀 secret", headers={"receipt": "r"})
        assert inbox.arrived.wait(5)
        assert inbox.bodies == ["비밀 secret"]
    finally:
        connection.disconnect()


def test_websocket_over_tls_speaks_stomp(tls_server, certificate):
    """A wss:// client that checks the certificate negotiates v12.stomp and gets CONNECTED."""
    _, cert = certificate
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{tls_server.http_port}/ws/chat",
        subprotocols=["v12.stomp"],
        sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(cert)},
        timeout=5,
    )
    try:
        assert ws.subprotocol == "v12.stomp"
        ws.send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
        reply = ws.recv()
        assert reply.startswith("CONNECTED\n")
        assert "version:1.2" in reply.split("\n\n")[0].split("\n")
    finally:
        ws.close()


def test_plain_client_is_refused_by_a_tls_endpoint(tls_server):
    """A client that skips the TLS handshake gets no STOMP session on a TLS endpoint."""
    connection = stomp.Connection12(
        [("127.0.0.1", tls_server.stomp_port)], reconnect_attempts_max=1, timeout=2
    )
    with pytest.raises(stomp.exception.ConnectFailedException):
        connection.connect(wait=True)
