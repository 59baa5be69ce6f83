"""``GET /health`` (the process serves) and ``GET /ready`` (it can do its job now).

A load balancer sends traffic only where ``/ready`` says 200; ``/health``
tells a supervisor whether the process is alive at all. ``/healthz`` is the
older name of ``/health``. Both answer JSON; ``/ready`` names each
dependency's state under ``checks``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stomp_chat.web.json import write_json

log = Logger()

#: One readiness check: a dict with ``ok`` (bool), ``state`` and details, now or later.
Check = Callable[[], "dict[str, Any] | Deferred[dict[str, Any]]"]


class Health(Resource):
    """``GET /health``: the process is up and serving HTTP; a few figures."""

    isLeaf = True

    def __init__(self, report: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._report = report or dict

    def render_GET(self, request: Request) -> bytes:
        return write_json(request, 200, {"status": "ok", **self._report()})


class Ready(Resource):
    """``GET /ready``: 200 when every check passes, else 503; each check's state."""

    isLeaf = True

    def __init__(self, checks: Mapping[str, Check]) -> None:
        super().__init__()
        self._checks = dict(checks)

    def render_GET(self, request: Request) -> int:
        names = list(self._checks)
        results = [maybeDeferred(self._checks[name]).addErrback(_check_failed) for name in names]
        gathered: Deferred[Any] = gatherResults(results)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(values: Any) -> None:
            if finished[0]:
                return
            checks = dict(zip(names, values, strict=True))
            ready = all(check.get("ok") for check in checks.values())
            body = write_json(
                request,
                200 if ready else 503,
                {"status": "ready" if ready else "not ready", "checks": checks},
            )
            request.write(body)
            request.finish()

        gathered.addCallback(answer)
        gathered.addErrback(lambda failure: log.failure("readiness check", failure))
        return NOT_DONE_YET  # type: ignore[no-any-return]


def _check_failed(failure: Any) -> dict[str, Any]:
    log.failure("a readiness check failed", failure)
    return {"ok": False, "state": "error", "error": failure.getErrorMessage()}
