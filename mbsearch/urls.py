"""Checking a target URL a user hands in, before it is printed, stored or put in a study name (no torch)."""

from __future__ import annotations

import urllib.parse

from mbsearch.errors import BadInput


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
