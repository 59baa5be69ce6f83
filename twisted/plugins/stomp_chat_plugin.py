"""The twistd plugin: ``twistd -n stomp-chat``.

twistd imports every plugin module on every run, so this one imports nothing
of the server until the service is actually built.
"""

from twisted.application.service import ServiceMaker

stompChat = ServiceMaker(
    "stomp-chat",
    "stomp_chat.tap",
    "A real-time group-chat server: STOMP over WebSocket and TCP.",
    "stomp-chat",
)
