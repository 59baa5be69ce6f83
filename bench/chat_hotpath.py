"""CPU per chat message in one process, split into broker, chat and session.

A SEND /app/message is parsed, passed through the inbound chain as
``--auth none`` builds it, numbered and buffered by the chat, and fanned out
to 10 subscribers whose transports drop the bytes: no sockets, no reactor, so
the figures are steady enough to compare two trees side by side. A last
figure adds what the real server adds per delivery: the same read handled by
the STOMP protocol of a TCP connection, fanned out to 10 subscribers on
loopback TCP connections through Twisted's transports and sent by the reactor
(the kernel's send and the subscribers' reads included). The tree measured is
the one on PYTHONPATH (run it from another checkout to compare):

    PYTHONPATH=. python bench/chat_hotpath.py
    cd ../baseline && PYTHONPATH=. python ../perf/bench/chat_hotpath.py

Each figure is the fastest of 7 rounds of 4,000 messages (process CPU time).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock

from stomp_chat.app.chat import ChatRequest, ChatService
from stomp_chat.app.routes import AppContext, AppRouter
from stomp_chat.broker import Broker
from stomp_chat.persistence import MemoryChatStore, WriteBehindWriter
from stomp_chat.stomp.frame import Frame, encode_frame
from stomp_chat.transport.stomp import StompFactory
from tests.stompfakes import Client, make_context

SUBSCRIBERS = 10
ROUNDS = 7
BATCHES = 200
PER_BATCH = 20


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


def _wire_as_served(context: Any, chat: ChatService, broker: Broker, router: AppRouter,
                    clock: Clock) -> None:
    """Add what ``--auth none`` serves on the chat path, where this tree has it."""
    try:
        from stomp_chat.app.readstate import ReadState
        from stomp_chat.authz.interceptor import AuthorizationInterceptor
        from stomp_chat.authz.policy import DestinationPolicy
        from stomp_chat.persistence.readpositions import MemoryReadPositionStore
    except ImportError:  # a tree from before authorization and unread counts
        return
    policy = DestinationPolicy(enforce=False, router=router)
    context.interceptors.append(AuthorizationInterceptor(policy))
    reads = ReadState(MemoryReadPositionStore(lambda room: True), chat, broker, clock)
    reads.register(router)
    context.subscription_listeners.append(reads)


class TcpFanOut:
    """A publisher's STOMP protocol and 10 subscribers' on loopback TCP, in this process."""

    def __init__(self, context: Any, room: int) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        factory = StompFactory(context)
        built: list[Any] = []
        original = factory.buildProtocol

        def build(addr: Any) -> Any:
            protocol = original(addr)
            built.append(protocol)
            return protocol

        factory.buildProtocol = build  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.clients = [
            socket.create_connection(("127.0.0.1", port.getHost().port))
            for _ in range(SUBSCRIBERS + 1)
        ]
        while len(built) < len(self.clients):
            reactor.iterate(0.01)
        connect = encode_frame(Frame("CONNECT", {"accept-version": "1.2"}), "1.2")
        subscribe = encode_frame(
            Frame("SUBSCRIBE", {"id": "room", "destination": f"/topic/chat/room/{room}"}), "1.2"
        )
        for protocol in built[:SUBSCRIBERS]:
            protocol.dataReceived(connect + subscribe)
        self.publisher = built[SUBSCRIBERS]
        self.publisher.dataReceived(connect)
        for client in self.clients:
            client.setblocking(False)
        self.drain()

    def drain(self) -> None:
        """Let the reactor send what was written, and the clients read it."""
        self.reactor.iterate(0)
        for client in self.clients:
            try:
                while client.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass

    def read(self, data: bytes) -> None:
        """One read from the publisher's socket, as the reactor would hand it over."""
        self.publisher.dataReceived(data)
        self.drain()


def main() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock, flush_interval=1.0)
    writer.startService()
    broker = Broker()
    router = AppRouter()
    chat = ChatService(store, writer, broker, clock)
    chat.register(router)
    context = make_context(clock=clock, broker=broker, router=router)
    _wire_as_served(context, chat, broker, router, clock)
    chat.post(ChatRequest("TALK", 1, 7, "hi"))
    chat.post(ChatRequest("TALK", 2, 7, "hi"))
    clock.advance(2)

    def connected() -> Client:
        client = Client(context)
        client.connect("1.2")
        return client

    for _ in range(SUBSCRIBERS):
        subscriber = connected()
        subscriber.send("SUBSCRIBE", {"id": "room", "destination": "/topic/chat/room/1"})
        subscriber.session.transport = Discard()
    sender = connected()
    sender.session.transport = Discard()

    body = json.dumps(
        {"type": "TALK", "roomId": 1, "senderId": 7, "detailMessage": "x" * 40}
    ).encode()
    frame = Frame("SEND", {"destination": "/app/message", "content-type": "application/json"},
                  body)
    batch = encode_frame(frame, "1.2") * PER_BATCH
    app_context = AppContext("bench", None, broker)
    headers = {"content-type": "application/json"}

    def through_the_session() -> None:
        sender.session.data_received(batch)

    tcp = TcpFanOut(context, room=2)
    tcp_batch = batch.replace(b'"roomId": 1', b'"roomId": 2')

    def through_tcp() -> None:
        tcp.read(tcp_batch)

    def chat_only() -> None:
        for _ in range(PER_BATCH):
            chat.handle_message(frame, app_context, {})

    def broker_only() -> None:
        for _ in range(PER_BATCH):
            broker.publish("/topic/chat/room/1", body, headers)

    def fastest(step: Callable[[], None]) -> float:
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.process_time()
            for _ in range(BATCHES):
                step()
                clock.advance(0.05)  # the write-behind saves a batch every second
            best = min(best, time.process_time() - start)
        return best / (BATCHES * PER_BATCH) * 1e6

    fan_out = fastest(broker_only)
    chat_path = fastest(chat_only)
    whole = fastest(through_the_session)
    over_tcp = fastest(through_tcp)
    print(f"µs per message (fan-out {SUBSCRIBERS}): whole {whole:.2f} = broker {fan_out:.2f}"
          f" + chat {chat_path - fan_out:.2f} + session and parser {whole - chat_path:.2f};"
          f" over TCP {over_tcp:.2f} ({over_tcp / SUBSCRIBERS:.2f} per delivery)")


if __name__ == "__main__":
    main()
