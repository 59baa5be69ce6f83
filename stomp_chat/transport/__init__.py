"""Transports: the STOMP protocol on raw TCP, and wrapped in a WebSocket."""
