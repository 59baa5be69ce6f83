"""Interceptors a deployment adds from configuration: ``package.module:factory`` names.

Each name is imported and called with no arguments; what it returns must have
an ``inbound(frame, session)`` method. Bad names are refused at start-up,
with a message saying which one and why.
"""

from __future__ import annotations

from importlib import import_module

from stomp_chat.interceptors import Interceptor


class InterceptorLoadError(ValueError):
    """A configured interceptor cannot be imported or built."""


def parse_interceptor_names(value: str) -> list[str]:
    """``"a.b:F, c.d:G"`` -> ``["a.b:F", "c.d:G"]``, checking each looks like a name."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        module, _, attribute = name.partition(":")
        if not module or not attribute:
            raise InterceptorLoadError(
                f"interceptor {name!r} must be written 'package.module:factory'"
            )
    return names


def load_interceptor(name: str) -> Interceptor:
    """Import ``package.module:factory`` and call the factory."""
    module_name, _, attribute = name.partition(":")
    try:
        target: object = import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ImportError as error:
        raise InterceptorLoadError(f"interceptor {name!r}: cannot import: {error}") from None
    except AttributeError:
        raise InterceptorLoadError(
            f"interceptor {name!r}: {module_name} has no {attribute!r}"
        ) from None
    if not callable(target):
        raise InterceptorLoadError(f"interceptor {name!r} is not callable")
    try:
        interceptor = target()
    except Exception as error:
        raise InterceptorLoadError(f"interceptor {name!r} failed to start: {error}") from None
    if not callable(getattr(interceptor, "inbound", None)):
        raise InterceptorLoadError(f"interceptor {name!r} has no inbound(frame, session) method")
    return interceptor  # type: ignore[no-any-return]
