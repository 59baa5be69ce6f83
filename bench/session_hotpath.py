"""CPU per SEND on the session's hot path, in process: no sockets, no reactor.

One sender publishes to a topic with a few subscribers; each SEND is parsed,
passed through the inbound chain and fanned out to transports that discard
the bytes. Run with and without interceptors to see what the chain costs:

    python bench/session_hotpath.py [--sends 200000] [--subscribers 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from twisted.internet.task import Clock

from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.heartbeat import HeartbeatMonitor
from stomp_chat.identity import ConnectionInfo
from stomp_chat.session import (
    AnonymousAuthenticator,
    AuthenticationInterceptor,
    ServerContext,
    SessionSettings,
    StompSession,
)
from stomp_chat.stomp.frame import Frame, encode_frame


class Discard:
    """A FrameTransport that drops what it is given."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class PassThrough:
    def inbound(self, frame, session):
        return frame


def session(context: ServerContext) -> StompSession:
    s = StompSession(context, Discard(), ConnectionInfo(peer="bench"))
    s.data_received(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    return s


def run(chain: str, sends: int, subscribers: int, batch: int = 50) -> float:
    """Seconds of CPU per SEND for one chain configuration."""
    clock = Clock()
    interceptors: list = []
    if chain in ("auth", "auth+1"):
        interceptors.append(AuthenticationInterceptor(AnonymousAuthenticator()))
    if chain == "auth+1":
        interceptors.append(PassThrough())
    context = ServerContext(
        Broker(), AppRouter(), SessionSettings(), HeartbeatMonitor(clock), clock, interceptors
    )
    for i in range(subscribers):
        sub = session(context)
        sub.data_received(encode_frame(
            Frame("SUBSCRIBE", {"destination": "/topic/chat/room/1", "id": str(i)}), "1.2"
        ))
    sender = session(context)
    data = encode_frame(
        Frame("SEND", {"destination": "/topic/chat/room/1"}, b"x" * 64), "1.2"
    ) * batch
    started = time.process_time()
    for _ in range(sends // batch):
        sender.data_received(data)
    return (time.process_time() - started) / sends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=200_000)
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for chain in ("none", "auth", "auth+1"):
        samples = [run(chain, args.sends, args.subscribers) for _ in range(args.repeats)]
        print(f"{chain:7s} median {statistics.median(samples) * 1e6:.2f} us/SEND "
              f"(min {min(samples) * 1e6:.2f}, {args.repeats} runs)")


if __name__ == "__main__":
    main()
