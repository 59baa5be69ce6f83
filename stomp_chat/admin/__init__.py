"""``stomp-chat-admin``: manage the server's users from the command line."""
