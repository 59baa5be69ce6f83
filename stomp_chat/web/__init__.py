"""HTTP resources: the WebSocket endpoint, health, the REST API."""
