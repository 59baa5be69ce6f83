"""The server's log: where it goes, in which format, and how it follows logrotate.

``twistd`` writes its log through the observer found on the application, so
the server installs its own: the same file ``twistd --logfile`` names, as
readable text (the default) or as JSON lines (one event per line, for log
shippers). SIGHUP reopens the file, after logrotate has renamed it; SIGUSR1
keeps ``twistd``'s own meaning, rotating the file to ``NAME.1``.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.logfile import LogFile

log = Logger()

LOG_FORMATS = ("text", "json")


def parse_log_format(value: str) -> str:
    """``text`` or ``json``."""
    value = value.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"--log-format is one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return value


parse_log_format.coerceDoc = "text or json."  # type: ignore[attr-defined]


def json_line(event: LogEvent) -> str:
    """One event as one line of JSON: Twisted's own encoding of the event, plus its text.

    ``eventAsJSON`` keeps every field (so the event can be loaded again);
    ``text`` is the rendered message, with the traceback of a failure, and
    ``level`` its level's name, for people and log shippers.
    """
    record = json.loads(eventAsJSON(event))
    level = event.get("log_level")
    record["level"] = level.name if level is not None else "info"
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    record["text"] = text
    return json.dumps(record, ensure_ascii=False) + "\n"


def make_observer(output: IO[Any], log_format: str) -> FileLogObserver:
    if log_format == "json":
        return FileLogObserver(output, json_line)
    return textFileLogObserver(output)


class ServerLog(Service):
    """The log file and observer; reopens or rotates the file on a signal."""

    def __init__(self, output: IO[Any], log_format: str, reactor: Any) -> None:
        self.output = output
        self.observer: ILogObserver = make_observer(output, log_format)
        self.reactor = reactor
        self._previous: dict[int, Any] = {}

    @property
    def file(self) -> LogFile | None:
        return self.output if isinstance(self.output, LogFile) else None

    def reopen(self) -> None:
        """Open the log file's name again: logrotate has moved the old one away."""
        file = self.file
        if file is not None:
            file.reopen()
            log.info("log file reopened on SIGHUP")

    def rotate(self) -> None:
        file = self.file
        if file is not None:
            file.rotate()

    def startService(self) -> None:
        super().startService()
        self._install(signal.SIGHUP, self.reopen)
        self._install(signal.SIGUSR1, self.rotate)

    def stopService(self) -> None:
        super().stopService()
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _install(self, number: int, action: Any) -> None:
        def handle(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(action)

        self._previous[number] = signal.signal(number, handle)


def server_log(twistd_options: Any, log_format: str, reactor: Any) -> ServerLog | None:
    """The log ``twistd``'s own options ask for, in ``log_format``.

    None when ``twistd`` logs elsewhere (``--syslog``, ``--logger``): its
    choice stands.
    """
    if twistd_options is None:
        return None
    get = twistd_options.get
    if get("syslog") or get("logger"):
        return None
    path = get("logfile")
    nodaemon = get("nodaemon")
    if path == "-":
        if not nodaemon:
            raise usage.UsageError("a daemon cannot log to stdout (--logfile=-); use -n")
        return ServerLog(sys.stdout, log_format, reactor)
    if nodaemon and not path:
        return ServerLog(sys.stdout, log_format, reactor)
    return ServerLog(LogFile.fromFullPath(path or "twistd.log"), log_format, reactor)
