"""Webhooks as they go on the wire, no I/O: the target a job names, the body that tells
of its end, and its signature under the Standard Webhooks spec.

The spec (https://www.standardwebhooks.com): a delivery carries ``webhook-id`` (the same
for every attempt of it, so a receiver drops repeats), ``webhook-timestamp`` (Unix
seconds, so a receiver refuses replays) and ``webhook-signature``, ``v1,`` and the base64
HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret's bytes; a secret is written
``whsec_`` and their base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048
"""The longest target a job may name (browsers' and proxies' common limit)."""
EXCERPT_BYTES = 200
"""How much of a receiver's reply is kept, to show why an attempt failed."""


class BadTarget(ValueError):
    """A webhook target that will not be called; the message says why, for the client."""


def secret_bytes(secret: str) -> bytes:
    """The key a ``whsec_<base64>`` secret stands for; :class:`ValueError` for anything
    else (a secret that is not the spec's form is a deployment's mistake, said at start)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret is written {SECRET_PREFIX}<base64>")
    try:
        text = secret.removeprefix(SECRET_PREFIX)
        # Padding optional, as the spec's libraries take it.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a webhook secret is written {SECRET_PREFIX}<base64>") from None
    if len(key) < 16:
        raise ValueError("a webhook secret holds at least 16 bytes (24 base64 characters)")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of a delivery: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: the spec's three (the signature only with a key)."""
    sent = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if key is not None:
        sent["webhook-signature"] = signature(key, msg_id, timestamp, body)
    return sent


def body(
    job_id: str,
    state: str,
    *,
    output: str,
    summary: dict[str, Any],
    error: str | None,
    ended_at: float,
) -> bytes:
    """What a delivery says of a job's end: ``type`` (``job.done``, ``job.failed``,
    ``job.cancelled``), when, and ``data``: the job, its state, its output text, the
    finished ``message`` and ``usage`` of its ``done`` (``null`` otherwise), its error."""
    data = {
        "job_id": job_id,
        "state": state,
        "output": output,
        "message": summary.get("message"),
        "usage": summary.get("usage"),
        "finish_reason": summary.get("finish_reason"),
        "error": error,
    }
    when = datetime.fromtimestamp(ended_at, UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": f"job.{state}", "timestamp": when, "data": data})


def check_url(url: str, allow_private: bool = False) -> str:
    """``url`` if a job may name it as its webhook: ``http`` or ``https``, a host, no
    credentials, at most :data:`MAX_URL_CHARS`, not a private address written out
    (unless ``allow_private``); else :class:`BadTarget`. Where a host name leads is
    :func:`address_refusal`'s to say, once it is resolved."""
    if len(url) > MAX_URL_CHARS:
        raise BadTarget(f"webhook: a URL of at most {MAX_URL_CHARS} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise BadTarget("webhook: a URL holds no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadTarget(f"webhook: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise BadTarget("webhook: an http:// or https:// URL")
    if not parts.hostname:
        raise BadTarget("webhook: a URL with a host")
    if parts.username is not None or parts.password is not None:
        raise BadTarget("webhook: a URL without credentials (the signature says who sent it)")
    if port == 0:
        raise BadTarget("webhook: a URL with a port other than 0")
    literal = _literal_address(parts.hostname)
    if literal is not None and not allow_private and (why := address_refusal(literal)) is not None:
        raise BadTarget(f"webhook: {why}")
    return url


def host_of(url: str) -> tuple[str, int]:
    """The host to resolve and the port to call, of a URL :func:`check_url` took."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def address_refusal(address: str) -> str | None:
    """Why a webhook may not be sent to ``address`` (an IP address, as resolved), or
    ``None`` when it may: loopback, link-local, private, multicast, reserved and
    unspecified addresses reach this machine or its network, not a receiver on the
    internet; an IPv4-mapped IPv6 address is judged as the IPv4 address it maps."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    for refused, what in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not global"),
    ):
        if refused:
            return f"{address} is a {what} address (WEBHOOK_ALLOW_PRIVATE_TARGETS=1 allows it)"
    return None


def _literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def excerpt(reply: bytes) -> str:
    """The start of a receiver's reply, as text, for whoever looks at the delivery."""
    return reply[:EXCERPT_BYTES].decode("utf-8", "replace")
