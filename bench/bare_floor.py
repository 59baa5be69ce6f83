"""A bare Twisted + Autobahn STOMP fan-out server: the floor for stomp-chat.

It does the least a STOMP broker must do to serve the benchmark: answer
CONNECT/STOMP with CONNECTED (heart-beats negotiated, and a newline sent to
heart-beating clients every interval), SUBSCRIBE (with RECEIPT), UNSUBSCRIBE,
SEND (fanned out as MESSAGE frames to every subscription of the destination)
and DISCONNECT.  No validation, no escaping, no flow control, no ACK modes,
no persistence.  What a real server costs per delivery above this is what
its own logic costs.

    python bench/bare_floor.py --ws-port 8090 --tcp-port 61690

WebSocket at ws://127.0.0.1:<ws-port>/ (any path), raw STOMP on <tcp-port>.
``--direct`` writes WebSocket frames straight to the TCP transport instead of
going through Autobahn's ``sendMessage`` (which logs on every call).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import defaultdict

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import protocol, reactor, task

HEARTBEAT_MS = 10000


class Hub:
    """Destinations to subscriptions, and the heart-beating connections."""

    def __init__(self) -> None:
        self.subs: dict[bytes, dict[tuple[int, bytes], StompCore]] = defaultdict(dict)
        self.ids = itertools.count(1)
        self.beating: set[StompCore] = set()

    def beat(self) -> None:
        for conn in list(self.beating):
            conn.send_raw(b"\n")


HUB = Hub()


class StompCore:
    """STOMP frame handling over any byte stream; subclasses provide send_raw."""

    def stomp_init(self) -> None:
        self.buf = b""
        self.my_subs: dict[bytes, bytes] = {}

    def send_raw(self, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stomp_close(self) -> None:
        for sub_id, dest in self.my_subs.items():
            HUB.subs[dest].pop((id(self), sub_id), None)
        self.my_subs.clear()
        HUB.beating.discard(self)

    def feed(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        while pos < n:
            while pos < n and buf[pos] in (10, 13):
                pos += 1
            if pos >= n:
                break
            head_end = buf.find(b"\n\n", pos)
            if head_end < 0:
                break
            lines = buf[pos:head_end].split(b"\n")
            command = lines[0].rstrip(b"\r")
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                key, _, value = line.rstrip(b"\r").partition(b":")
                headers.setdefault(key, value)
            body_start = head_end + 2
            length = headers.get(b"content-length")
            if length is not None:
                body_end = body_start + int(length)
                if body_end >= n:
                    break
            else:
                body_end = buf.find(b"\0", body_start)
                if body_end < 0:
                    break
            self.frame(command, headers, buf[body_start:body_end])
            pos = body_end + 1
        self.buf = buf[pos:]

    def receipt(self, headers: dict[bytes, bytes]) -> None:
        rid = headers.get(b"receipt")
        if rid is not None:
            self.send_raw(b"RECEIPT\nreceipt-id:" + rid + b"\n\n\0")

    def frame(self, command: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        if command == b"SEND":
            dest = headers.get(b"destination", b"")
            subs = HUB.subs.get(dest)
            if subs:
                head = b"MESSAGE\ndestination:%s\nmessage-id:%d\ncontent-length:%d\n" % (
                    dest,
                    next(HUB.ids),
                    len(body),
                )
                head += b"subscription:"
                tail = b"\n\n" + body + b"\0"
                for (_, sub_id), conn in list(subs.items()):
                    conn.send_raw(head + sub_id + tail)
            self.receipt(headers)
        elif command == b"SUBSCRIBE":
            dest = headers.get(b"destination", b"")
            sub_id = headers.get(b"id", b"0")
            HUB.subs[dest][(id(self), sub_id)] = self
            self.my_subs[sub_id] = dest
            self.receipt(headers)
        elif command == b"UNSUBSCRIBE":
            sub_id = headers.get(b"id", b"0")
            dest = self.my_subs.pop(sub_id, None)
            if dest is not None:
                HUB.subs[dest].pop((id(self), sub_id), None)
            self.receipt(headers)
        elif command in (b"CONNECT", b"STOMP"):
            cx, _, cy = headers.get(b"heart-beat", b"0,0").partition(b",")
            sx = HEARTBEAT_MS if int(cy or 0) > 0 else 0
            sy = HEARTBEAT_MS if int(cx or 0) > 0 else 0
            if sx:
                HUB.beating.add(self)
            self.send_raw(b"CONNECTED\nversion:1.2\nheart-beat:%d,%d\n\n\0" % (sx, sy))
        elif command == b"DISCONNECT":
            self.receipt(headers)
            self.stomp_close()


class WsStomp(WebSocketServerProtocol, StompCore):
    direct = False

    def onConnect(self, request):  # noqa: N802 - Autobahn's name
        for sp in ("v12.stomp", "v11.stomp", "v10.stomp"):
            if sp in request.protocols:
                return sp
        return None

    def onOpen(self) -> None:  # noqa: N802
        self.stomp_init()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.feed(payload)

    def onClose(self, wasClean, code, reason) -> None:  # noqa: N802, N803
        if hasattr(self, "my_subs"):
            self.stomp_close()

    def send_raw(self, data: bytes) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if self.direct:
            size = len(data)
            if size < 126:
                header = bytes((0x81, size))
            elif size < 65536:
                header = bytes((0x81, 126)) + size.to_bytes(2, "big")
            else:
                header = bytes((0x81, 127)) + size.to_bytes(8, "big")
            self.transport.write(header + data)
        else:
            self.sendMessage(data, isBinary=False)


class TcpStomp(protocol.Protocol, StompCore):
    def connectionMade(self) -> None:  # noqa: N802
        self.stomp_init()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.feed(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.stomp_close()

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ws-port", type=int, default=8090)
    ap.add_argument("--tcp-port", type=int, default=61690)
    ap.add_argument("--interface", default="127.0.0.1")
    ap.add_argument("--direct", action="store_true", help="bypass Autobahn's sendMessage")
    ap.add_argument("--backlog", type=int, default=50)
    args = ap.parse_args(argv)

    WsStomp.direct = args.direct
    ws_factory = WebSocketServerFactory(protocols=["v12.stomp", "v11.stomp", "v10.stomp"])
    ws_factory.protocol = WsStomp
    tcp_factory = protocol.Factory.forProtocol(TcpStomp)
    reactor.listenTCP(args.ws_port, ws_factory, backlog=args.backlog, interface=args.interface)
    reactor.listenTCP(args.tcp_port, tcp_factory, backlog=args.backlog, interface=args.interface)
    task.LoopingCall(HUB.beat).start(HEARTBEAT_MS / 1000.0, now=False)
    print(f"bare floor: ws://{args.interface}:{args.ws_port}/ tcp:{args.tcp_port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
