"""Where option values come from: the command line, the environment, a TOML file.

Precedence, highest first: command line, ``STOMP_CHAT_*`` environment
variables, the ``--config`` file, the built-in defaults. Each source is turned
into ``--name=value`` arguments placed before the command line's, so the
option parser's "last one wins" gives that order; each value is checked
where it comes from, so an error names the file key or the variable.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.python import usage

#: Prefix of the environment variables that set options: STOMP_CHAT_DATABASE sets --database.
ENV_PREFIX = "STOMP_CHAT_"

#: Option name -> coercion function (None when the value is taken as text).
Coercions = Mapping[str, Callable[[str], Any] | None]


def coercions(opt_parameters: Sequence[Sequence[Any]], exclude: set[str]) -> dict[str, Any]:
    """The options a file or the environment may set, with their coercions."""
    return {
        entry[0]: (entry[4] if len(entry) > 4 else None)
        for entry in opt_parameters
        if entry[0] not in exclude
    }


def env_name(option: str) -> str:
    """``max-frame-size`` -> ``STOMP_CHAT_MAX_FRAME_SIZE``."""
    return ENV_PREFIX + option.upper().replace("-", "_")


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The config file named on the command line, else by ``STOMP_CHAT_CONFIG``."""
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg in ("--config", "-c") and index + 1 < len(argv):
            return argv[index + 1]
    return environ.get(env_name("config")) or None


def _check(source: str, coerce: Callable[[str], Any] | None, value: str) -> None:
    if coerce is None:
        return
    try:
        coerce(value)
    except ValueError as error:
        raise usage.UsageError(f"{source}: {error}") from None


def environment_arguments(environ: Mapping[str, str], known: Coercions) -> list[str]:
    """``--name=value`` for each ``STOMP_CHAT_*`` variable naming an option.

    Variables with the prefix that name no option are left alone: test
    harnesses and wrappers use the prefix for their own settings.
    """
    arguments = []
    for name, coerce in known.items():
        variable = env_name(name)
        if variable in environ:
            value = environ[variable]
            _check(f"environment variable {variable}", coerce, value)
            arguments.append(f"--{name}={value}")
    return arguments


#: Tables of the config file that are not options; their own loaders read them
#: (``rules``: the destination rules of stomp_chat.authz.rules).
NOT_OPTIONS = frozenset({"rules"})


def file_arguments(path: str, known: Coercions) -> list[str]:
    """Turn a TOML config file into ``--name=value`` arguments."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise usage.UsageError(f"--config: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise usage.UsageError(f"--config: {path} is not valid TOML: {error}") from None
    arguments = []
    for key, value in data.items():
        if key in NOT_OPTIONS:
            continue
        name = key.replace("_", "-")
        if name not in known:
            raise usage.UsageError(
                f"--config: unknown option {key!r} in {path}; known: {', '.join(sorted(known))}"
            )
        if isinstance(value, list) and all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in value
        ):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise usage.UsageError(
                f"--config: {key} in {path} must be a string, a number, true/false or a list "
                f"of strings or numbers, not {type(value).__name__}"
            )
        _check(f"--config: {key} in {path}", known[name], text)
        arguments.append(f"--{name}={text}")
    return arguments
