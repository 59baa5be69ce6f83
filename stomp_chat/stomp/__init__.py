"""STOMP wire format: frames, escaping, version and heart-beat negotiation, parsing."""

from stomp_chat.stomp.frame import (
    SUPPORTED_VERSIONS,
    V1_0,
    V1_1,
    V1_2,
    Frame,
    FrameError,
    encode_frame,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
)
from stomp_chat.stomp.parser import FrameParser

__all__ = [
    "SUPPORTED_VERSIONS",
    "V1_0",
    "V1_1",
    "V1_2",
    "Frame",
    "FrameError",
    "FrameParser",
    "encode_frame",
    "negotiate_heartbeat",
    "negotiate_version",
    "parse_heartbeat",
]
