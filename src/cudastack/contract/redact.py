"""Secrets kept out of what cudastack records: values of secret-looking names, URL credentials.

Standard library only: the worker redacts what it records (env.json) with it, the host what it
records (build.log, log.txt, failure reasons) and what it shows again (the report)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from cudastack.contract.schema import SECRET_NAME

REDACTED = "(redacted)"
# What stands for the password (or a lone user part, often a token) of a URL, as pip shows it.
HIDDEN = "****"
# A known secret value is replaced wherever it occurs in recorded text only from this length on:
# a short value (1, true, /tmp) would blank out unrelated text and is no secret worth the name.
MIN_LITERAL = 8

# scheme://userinfo@ : the userinfo ends at the authority's last @ (a password may hold an
# unescaped @), and never crosses a path, a query, white space or quotes.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^\s/?#'\"<>]*)@")
# user:password@host without a scheme, as a proxy variable may hold it (curl and pip take it).
_BARE_USERINFO = re.compile(r"^(?P<info>[^\s/?#@'\"<>:]+:[^\s/?#'\"<>]*)@(?=[^\s@]+$)")
# NAME=value in a command line or a log line; only upper-case (environment variable) names: a
# case id such as sort[key=3] is no secret.
_ASSIGNMENT = re.compile(r"\b(?P<name>[A-Z_][A-Z0-9_]*)=(?P<value>[^\s'\"]+)")


def _hide_info(info: str) -> str:
    """user:password as user:****; a lone user part (often a token) as ****."""
    user, colon, _ = info.partition(":")
    return f"{user}:{HIDDEN}" if colon else HIDDEN


def _url_credentials(text: str) -> str:
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{_hide_info(m['info'])}@", text)


def text(value: str, secrets: Iterable[str] = ()) -> str:
    """``value`` with every URL's credentials hidden (https://user:****@host), the value of
    every ``NAME=value`` whose upper-case NAME looks secret replaced by (redacted), and each of
    ``secrets`` (known secret values, see ``secret_values``) replaced wherever it occurs."""
    for secret in sorted(set(secrets), key=len, reverse=True):  # a longer one may hold a shorter
        if len(secret) >= MIN_LITERAL:
            value = value.replace(secret, REDACTED)
    value = _url_credentials(value)
    return _ASSIGNMENT.sub(
        lambda m: f"{m['name']}={REDACTED}" if SECRET_NAME.search(m["name"]) else m[0], value
    )


def variable(name: str, value: str) -> str:
    """An environment variable's value as it may be recorded: (redacted) when ``name`` looks
    secret (TOKEN, PASSWORD, KEY, ...), else with URL credentials hidden, a proxy's
    scheme-less ``user:password@host`` too."""
    if SECRET_NAME.search(name):
        return REDACTED
    value = _BARE_USERINFO.sub(lambda m: f"{_hide_info(m['info'])}@", value)
    return _url_credentials(value)


def assignment(item: str) -> str:
    """A ``KEY=VALUE`` item (an --env option) as it may be recorded: VALUE through ``variable``;
    an item without ``=`` as ``text`` has it."""
    name, eq, value = item.partition("=")
    return f"{name}={variable(name, value)}" if eq else text(item)


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as it may be recorded: every value through ``variable``."""
    return {name: variable(name, value) for name, value in env.items()}


def secret_values(*envs: Mapping[str, str]) -> frozenset[str]:
    """The secret values that ``envs`` hold, for ``text`` to find in free text (a log line that
    prints a token, a proxy error that names its URL without a scheme): every value of a
    secret-looking name, and the password (or lone user part) of every URL in a value."""
    found: set[str] = set()
    for env in envs:
        for name, value in env.items():
            if SECRET_NAME.search(name):
                found.add(value)
            for pattern in (_URL_USERINFO, _BARE_USERINFO):
                for match in pattern.finditer(value):
                    user, colon, password = match["info"].partition(":")
                    found.add(password if colon else user)
    return frozenset(s for s in found if len(s) >= MIN_LITERAL)
