"""Secrets kept out of what clients are told: keys, and credentials in URLs.

Error text that reaches clients (``failed``, ``status``'s ``error``, ``error``)
often quotes what a provider said or where it lives: a 401's body may repeat
the key, a base URL may carry ``?api-key=...`` or ``user:password@``. The log
keeps the detail; clients get the text with those parts replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit, urlunsplit

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


# A query parameter in a line of text (a logged request path, a URL in prose).
_QUERY_PARAM = re.compile(r"(?<=[?&])([^=&?#\s\"'<>]+)=([^&#\s\"'<>]*)")


def redact_query_names(text: str) -> str:
    """``text`` with the value of every query parameter whose name, once decoded, is a
    credential's (``?access%5Ftoken=`` is ``?access_token=``) replaced: what a server
    decodes to read a key, a log must decode to hide it."""
    if "=" not in text:
        return text
    return _QUERY_PARAM.sub(_redact_param, text)


def _redact_param(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value and unquote_plus(name).strip().lower() in SENSITIVE_PARAMS:
        return f"{name}={REDACTED}"
    return match.group(0)


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
    secret (as is, URL-quoted, or masked: ``vll******7xyz``) replaced."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    text = _KEY_SHAPED.sub(REDACTED, text)
    # A shorter one would blot out ordinary words.
    secrets = [secret for secret in secrets if len(secret) >= 4]
    for secret in secrets:
        text = text.replace(secret, REDACTED).replace(quote(secret, safe=""), REDACTED)
    if secrets and _MASK.search(text):
        text = _MASKABLE.sub(lambda match: _unmasked(match.group(0), secrets), text)
    return text


# How services show a key in part: its ends around a run of asterisks or an ellipsis.
_MASK = re.compile(r"\*{3,}|\.{3,}|…")
_MASKABLE = re.compile(r"[\w\-.~+/=*…]+")


def _unmasked(word: str, secrets: list[str]) -> str:
    """``word``, or REDACTED if it shows the ends of one of ``secrets`` around a mask."""
    masks = list(_MASK.finditer(word))
    if not masks:
        return word
    head, tail = word[: masks[0].start()], word[masks[-1].end() :].rstrip(".")
    if not head and not tail:
        return word
    for secret in secrets:
        if secret.startswith(head) and secret.endswith(tail):
            end = word[len(word.rstrip(".")) :] if tail else ""
            return REDACTED + end
    return word
