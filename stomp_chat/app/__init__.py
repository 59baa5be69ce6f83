"""Application handlers behind ``/app/...`` destinations."""

from stomp_chat.app.routes import AppContext, ApplicationError, AppRouter, NoHandler

__all__ = ["AppContext", "AppRouter", "ApplicationError", "NoHandler"]
