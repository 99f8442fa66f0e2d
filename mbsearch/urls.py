"""URLs a user hands in: checked before they are printed, stored or put in a study name; secrets masked (no torch)."""

from __future__ import annotations

import re
import urllib.parse

from mbsearch.errors import BadInput

QUERY_SECRET = re.compile(r"((?:^|[?&;])(?:password|passwd|sslpassword|sslkey)=)[^&;#]*", re.IGNORECASE)
DSN_SECRET = re.compile(r"((?:^|\s)password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with every credential masked, for logs, progress lines, errors and reports.

    Covers what SQLAlchemy and libpq accept: `user:PW@host`, an empty user (`:PW@host`), a password
    that itself holds `@`, `:` or `/` (the user info ends at the last `@` before the query), the query
    form `?password=PW`, and libpq's `password=PW` keyword strings.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return DSN_SECRET.sub(r"\1***", url)
    query_at = rest.find("?")
    head, query = (rest, "") if query_at < 0 else (rest[:query_at], rest[query_at:])
    at = head.rfind("@")
    if at >= 0:
        user, colon, _ = head[:at].partition(":")
        head = f"{user}:***{head[at:]}" if colon else head
    return f"{scheme}://{head}" + QUERY_SECRET.sub(r"\1***", query)


# Options whose next argument is a secret in itself (the agent's token).
_SECRET_OPTIONS = ("--target-token", "--token")


def redact_command(argv: list[str]) -> list[str]:
    """A command line with every credential masked: storage URLs in any argument and the values of
    token options, so a command can be shown to other users of the host (the timing lock names it)."""
    shown: list[str] = []
    for index, arg in enumerate(argv):
        option, equals, _ = arg.partition("=")
        if index and argv[index - 1] in _SECRET_OPTIONS:
            shown.append("***")
        elif equals and option in _SECRET_OPTIONS:
            shown.append(f"{option}=***")
        else:
            shown.append(redact(arg) if "://" in arg or "password" in arg.lower() else arg)
    return shown


def check_target_url(url: str) -> None:
    """Refuse a target URL that carries a user or password (they would be printed, logged and put in
    study names; the agent's token is passed with --target-token), or has no host."""
    try:
        parts = urllib.parse.urlsplit(url)
        has_userinfo = "@" in parts.netloc
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise BadInput("--target: not a valid http://HOST:PORT URL") from None
    if has_userinfo:
        raise BadInput(
            "--target: a user or password in the URL is refused (it would be printed and stored); "
            "give http://HOST:PORT and the agent's token with --target-token or MBSEARCH_TARGET_TOKEN"
        )
    if not parts.hostname:
        raise BadInput(f"--target {url}: no host; give http://HOST:PORT of 'mbsearch agent'")
