"""CPU per chat message with authorization on and off, in process: no sockets, no reactor.

One sender says TALK through ``/app/message`` into a room with a few subscribers; each SEND
is parsed, passed through the inbound chain, admitted by the chat (numbered, cached, written
behind to the in-memory store) and fanned out to transports that discard the bytes.

- ``none``: the seed's path, no interceptor and no chat gate;
- ``none+authz``: ``--auth none`` as served: the authorization interceptor guards the
  application-owned destinations;
- ``authn``: principals from CONNECT (an authentication interceptor), no authorization;
- ``enforced``: principals from CONNECT, the authorization interceptor and the chat gate
  (sender identity and membership, from a warm cache). Against ``authn`` it shows what
  authorization alone costs.

    python bench/authz_chat.py [--messages 100000] [--subscribers 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from twisted.internet.task import Clock

from stomp_chat.app.chat import ChatService
from stomp_chat.app.routes import AppRouter
from stomp_chat.authz.chatgate import ChatGate
from stomp_chat.authz.interceptor import AuthorizationInterceptor
from stomp_chat.authz.policy import DestinationPolicy
from stomp_chat.authz.rooms import RoomAccess
from stomp_chat.authz.store import MemoryRoomAccessStore
from stomp_chat.broker import Broker
from stomp_chat.heartbeat import HeartbeatMonitor
from stomp_chat.identity import ConnectionInfo, Principal
from stomp_chat.persistence import MemoryChatStore, WriteBehindWriter
from stomp_chat.session import (
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


class LoginAuthenticator:
    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> Principal:
        login = frame.headers.get("login", "guest")
        return Principal(login, login.title(), method="jwt")


def run(variant: str, messages: int, subscribers: int, batch: int = 50) -> tuple[float, int]:
    """Seconds of CPU per chat message, and deliveries per message, for one variant."""
    clock = Clock()
    clock.advance(1_700_000_000)
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock, flush_interval=0.05, max_pending=10 * batch)
    writer.startService()
    broker, router = Broker(), AppRouter()
    rooms = RoomAccess(store, MemoryRoomAccessStore(store), clock)
    enforce = variant == "enforced"
    gate = ChatGate(rooms) if enforce else None
    ChatService(store, writer, broker, clock, gate=gate).register(router)
    interceptors: list = []
    if variant in ("authn", "enforced"):
        interceptors.append(AuthenticationInterceptor(LoginAuthenticator()))
    if variant in ("none+authz", "enforced"):
        policy = DestinationPolicy(enforce=enforce, rooms=rooms, router=router)
        interceptors.append(AuthorizationInterceptor(policy))
    context = ServerContext(
        broker, router, SessionSettings(), HeartbeatMonitor(clock), clock, interceptors
    )

    def session(login: str) -> StompSession:
        s = StompSession(context, Discard(), ConnectionInfo(peer="bench"))
        s.data_received(encode_frame(Frame("CONNECT", {"accept-version": "1.2", "login": login})))
        return s

    delivered = [0]

    class Counting(Discard):
        def write(self, data: bytes) -> None:
            delivered[0] += 1

    for i in range(subscribers):
        sub = StompSession(context, Counting(), ConnectionInfo(peer="bench"))
        sub.data_received(encode_frame(Frame("CONNECT", {"accept-version": "1.2",
                                                         "login": f"reader{i}"})))
        sub.data_received(encode_frame(
            Frame("SUBSCRIBE", {"destination": "/topic/chat/room/1", "id": str(i)}), "1.2"
        ))
    sender = session("alice")

    def chat(kind: str, text: str = "") -> bytes:
        body = {"type": kind, "roomId": 1, "detailMessage": text}
        if not enforce:
            body["senderId"] = 7
        return encode_frame(
            Frame("SEND", {"destination": "/app/message"}, json.dumps(body).encode()), "1.2"
        )

    sender.data_received(chat("ENTER"))
    clock.advance(1)
    data = chat("TALK", "x" * 64) * batch
    delivered[0] = 0
    started = time.process_time()
    for _ in range(messages // batch):
        sender.data_received(data)
        clock.advance(0.05)  # the write-behind flushes, as the reactor would run it
    spent = time.process_time() - started
    sent = messages // batch * batch
    return spent / sent, round(delivered[0] / sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    baseline = None
    for variant in ("none", "none+authz", "authn", "enforced"):
        samples = []
        fanout = 0
        for _ in range(args.repeats):
            seconds, fanout = run(variant, args.messages, args.subscribers)
            samples.append(seconds)
        median = statistics.median(samples)
        baseline = baseline or median
        print(f"{variant:11s} median {median * 1e6:6.2f} us/message "
              f"({median / max(fanout, 1) * 1e6:5.2f} us/delivery, fan-out {fanout}, "
              f"x{median / baseline:.3f} of none; min {min(samples) * 1e6:.2f}, "
              f"{args.repeats} runs)")


if __name__ == "__main__":
    main()
