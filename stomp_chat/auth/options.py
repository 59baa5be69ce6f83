"""The authentication options of ``twistd stomp-chat``, checked at start-up.

Declared here and added to the server's ``Options`` by the composition root,
so that every rule about them (which mode needs which key, which listeners
``--auth none`` may open) lives beside the code that uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from functools import partial
from typing import Any

from twisted.python import usage

from stomp_chat import option_values
from stomp_chat.auth.throttle import DEFAULT_BURST, DEFAULT_MAX_ADDRESSES, DEFAULT_REFILL_SECONDS
from stomp_chat.auth.tokens import (
    DEFAULT_LEEWAY,
    DEFAULT_LOGIN_TOKEN_LIFETIME,
    DEFAULT_NAME_CLAIM,
    DEFAULT_ROLES_CLAIM,
    KeyFileError,
    load_public_key_file,
    load_secret_file,
)
from stomp_chat.identity import AUTH_JWT, AUTH_NONE, AUTH_PASSWORD

AUTH_MODES = (AUTH_NONE, AUTH_PASSWORD, AUTH_JWT)

#: With ``--auth none`` the listeners default to loopback: nobody else can reach
#: a server that believes whoever connects. Other modes listen everywhere.
LOOPBACK_DEFAULTS = {"stomp": "tcp:61613:interface=127.0.0.1",
                     "http": "tcp:8080:interface=127.0.0.1"}
PUBLIC_DEFAULTS = {"stomp": "tcp:61613", "http": "tcp:8080"}


_positive_number = partial(option_values.number, allow_zero=False)
_non_negative_number = partial(option_values.number, allow_zero=True)
_positive_whole = option_values.positive_int


AUTH_PARAMETERS: list[list[Any]] = [
    [
        "auth",
        None,
        None,
        "How clients prove who they are: none (anyone, as the login they give; listeners "
        "default to loopback), password (users from stomp-chat-admin) or jwt (signed "
        "tokens). Default: none.",
    ],
    ["jwt-secret-file", None, None,
     "--auth jwt: file holding the HS256 shared secret (32+ bytes). --auth password: signs "
     "the tokens POST /api/login issues (default: a random secret per process)."],
    ["jwt-public-key-file", None, None,
     "--auth jwt: PEM public key verifying RS256 (RSA), ES256 (EC P-256) or EdDSA tokens."],
    ["jwt-audience", None, None, "--auth jwt: the aud claim tokens must carry."],
    ["jwt-issuer", None, None, "--auth jwt: the iss claim tokens must carry."],
    ["jwt-leeway", None, DEFAULT_LEEWAY,
     "--auth jwt: seconds of clock difference tolerated on exp and nbf.",
     _non_negative_number("--jwt-leeway")],
    ["jwt-name-claim", None, DEFAULT_NAME_CLAIM,
     "--auth jwt: the claim holding the user's display name (falls back to sub)."],
    ["jwt-roles-claim", None, DEFAULT_ROLES_CLAIM,
     "--auth jwt: the claim holding the user's roles (a list, or a space-separated string)."],
    ["login-token-lifetime", None, DEFAULT_LOGIN_TOKEN_LIFETIME,
     "--auth password: seconds a token from POST /api/login stays valid.",
     _positive_whole("--login-token-lifetime")],
    ["auth-failure-burst", None, DEFAULT_BURST,
     "Failed logins one address may make in a row before its attempts are slowed.",
     _positive_whole("--auth-failure-burst")],
    ["auth-failure-refill", None, DEFAULT_REFILL_SECONDS,
     "Seconds after which a slowed address may try once more.",
     _positive_number("--auth-failure-refill")],
    ["auth-failure-addresses", None, DEFAULT_MAX_ADDRESSES,
     "How many addresses with recent failed logins are remembered (oldest forgotten first).",
     _positive_whole("--auth-failure-addresses")],
]

AUTH_OPTION_NAMES = frozenset(parameter[0] for parameter in AUTH_PARAMETERS)


def _split_endpoint(description: str) -> list[str]:
    """An endpoint string's ``:``-separated fields, honouring ``\\:`` escapes."""
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def listens_beyond_loopback(description: str) -> bool:
    """Whether an endpoint can be reached from another machine.

    UNIX sockets cannot; TCP and TLS ones can unless ``interface=`` names a
    loopback address; any other kind of endpoint is assumed reachable.
    """
    fields = _split_endpoint(description.strip())
    kind = fields[0].lower()
    if kind == "unix":
        return False
    if kind not in ("tcp", "tcp6", "ssl"):
        return True
    interface = next(
        (field.split("=", 1)[1] for field in fields[1:] if field.startswith("interface=")), None
    )
    if interface is None:
        return True
    import ipaddress

    try:
        return not ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return interface.lower() != "localhost"


def resolve_auth_options(options: MutableMapping[str, Any]) -> list[str]:
    """Check the authentication options and fill in the listener defaults.

    Runs before the endpoints are parsed (a ``stomp``/``http`` of ``None``
    means "not given"). Returns the listeners open beyond loopback while
    nobody is authenticated, which the server warns about at start-up.
    Raises ``usage.UsageError`` for anything that cannot work.
    """
    mode = options.get("auth")
    explicit = mode is not None
    mode = (mode or AUTH_NONE).strip().lower()
    if mode not in AUTH_MODES:
        raise usage.UsageError(f"--auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    options["auth"] = mode
    defaults = LOOPBACK_DEFAULTS if mode == AUTH_NONE else PUBLIC_DEFAULTS
    for name, default in defaults.items():
        if options.get(name) is None:
            options[name] = default
    secret, public = options.get("jwt-secret-file"), options.get("jwt-public-key-file")
    if mode == AUTH_JWT:
        if bool(secret) == bool(public):
            raise usage.UsageError(
                "--auth jwt needs exactly one of --jwt-secret-file (HS256) and "
                "--jwt-public-key-file (RS256/ES256)"
            )
        try:
            options["jwt-key"] = (
                load_secret_file(secret) if secret else load_public_key_file(str(public))
            )
        except KeyFileError as error:
            option = "--jwt-secret-file" if secret else "--jwt-public-key-file"
            raise usage.UsageError(f"{option}: {error}") from None
    elif public:
        raise usage.UsageError("--jwt-public-key-file is only used with --auth jwt")
    elif secret and mode == AUTH_PASSWORD:
        try:
            load_secret_file(secret)
        except KeyFileError as error:
            raise usage.UsageError(f"--jwt-secret-file: {error}") from None
    if mode != AUTH_NONE:
        return []
    exposed = [
        name for name in ("stomp", "http")
        if options.get(name) and options[name].strip().lower() != "none"
        and listens_beyond_loopback(options[name])
    ]
    if exposed and not explicit:
        listed = ", ".join(f"--{name}={options[name]}" for name in exposed)
        raise usage.UsageError(
            f"{listed} listens beyond loopback while nobody is authenticated; choose "
            "--auth password or --auth jwt, or say --auth none to accept anyone who can "
            "reach the port"
        )
    return exposed


def unauthenticated_warning(exposed: list[str], endpoints: Mapping[str, Any]) -> str | None:
    if not exposed:
        return None
    return (
        "--auth none: anyone who reaches " + ", ".join(str(endpoints[n]) for n in exposed)
        + " is whoever they claim to be; use --auth password or --auth jwt beyond a trusted "
        "network"
    )
