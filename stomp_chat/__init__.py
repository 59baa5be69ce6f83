"""stomp-chat: a real-time group-chat server speaking STOMP over WebSocket and TCP."""

__version__ = "0.1.0"
