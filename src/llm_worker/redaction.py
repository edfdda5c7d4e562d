"""Secrets kept out of what clients are told: keys, and credentials in URLs.

Error text that reaches clients (``failed``, ``status``'s ``error``, ``error``)
often quotes what a provider said or where it lives: a 401's body may repeat
the key, a base URL may carry ``?api-key=...`` or ``user:password@``. The log
keeps the detail; clients get the text with those parts replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"
# Query parameters that carry credentials, by the names services give them.
SENSITIVE_PARAMS = frozenset(
    {
        "api-key",
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        "auth",
        "password",
        "secret",
        "sig",
        "signature",
        "code",
    }
)
# A URL in prose: up to a space or a quote, without the punctuation that ends a sentence.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]*[^\s\"'<>.,:;!?)]", re.IGNORECASE)
# Strings shaped like keys whatever key the text quotes: OpenAI's and Anthropic's
# (``sk-...``, ``sk-ant-...``), this worker's own (``lw-...``), and bearer tokens.
# Providers mask keys differently (``sk-abc***xyz``), so the masked forms go too.
_KEY_SHAPED = re.compile(r"\b(?:sk|lw)-[A-Za-z0-9_\-*]{8,}|(?<=Bearer )[^\s\"',;]+")


def redact_url(url: str) -> str:
    """``url`` without user info and with the values of credential parameters replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        # Not REDACTED: brackets there would read as an IPv6 address.
        netloc = f"***@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in SENSITIVE_PARAMS for name, _ in pairs):
            query = urlencode(
                [(n, REDACTED if n.lower() in SENSITIVE_PARAMS else v) for n, v in pairs],
                safe="[]",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str | None) -> list[str]:
    """The credentials ``url`` itself carries: its password, its credential parameters."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password or ""] if "@" in parts.netloc else []
    found += [
        value
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name.lower() in SENSITIVE_PARAMS
    ]
    return [secret for secret in found if secret]


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL's credentials, every key-shaped string and every
    secret (as is, and URL-quoted) replaced."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    text = _KEY_SHAPED.sub(REDACTED, text)
    for secret in secrets:
        if len(secret) >= 4:  # a shorter one would blot out ordinary words
            text = text.replace(secret, REDACTED).replace(quote(secret, safe=""), REDACTED)
    return text
