"""Where a job's webhook goes, and with which secret: checked when the job is added and
again before each attempt (a name's addresses may have changed since).

A job names its ``webhook``, or its tenant's default applies (``webhook_url`` in
``API_KEYS_FILE``), or the deployment's (``WEBHOOK_URL``). The secret is the tenant's
(``webhook_secret``), else ``WEBHOOK_SECRET``; a deployment with neither sends no webhook
(a request naming one is refused), since an unsigned one could be anyone's.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_worker.wire.webhooks import BadTarget, address_refusal, check_url, host_of

RESOLVE_SECONDS = 5.0
"""How long a name may take to resolve, at add and before an attempt."""


@dataclass(frozen=True, slots=True)
class TenantWebhook:
    """A tenant's own webhook settings, where ``API_KEYS_FILE`` gives it some."""

    url: str | None = None
    secret: bytes | None = field(default=None, repr=False)


NO_TENANT_WEBHOOK = TenantWebhook()


@dataclass(frozen=True, slots=True)
class Target:
    """An address a delivery may be sent to, found by resolving its URL's host."""

    url: str
    host: str
    port: int
    address: str


@dataclass
class WebhookTargets:
    """The deployment's webhook settings: defaults, secrets, and which targets it calls."""

    default_url: str | None = None
    secret: bytes | None = field(default=None, repr=False)
    allow_private: bool = False
    tenants: Callable[[str], TenantWebhook] = lambda tenant: NO_TENANT_WEBHOOK

    def url_for(self, tenant: str, given: str | None) -> str | None:
        """The webhook of a new job of ``tenant``: the one it names, else a default."""
        return given if given is not None else self.tenants(tenant).url or self.default_url

    def key_for(self, tenant: str) -> bytes | None:
        """The key ``tenant``'s webhooks are signed with; ``None`` if it has none."""
        return self.tenants(tenant).secret or self.secret

    async def check(self, url: str, tenant: str) -> Target:
        """The address to call for ``url``, if every address its host has may be
        called; :class:`BadTarget` saying why not (for the client at add, for the
        delivery's record before an attempt)."""
        if self.key_for(tenant) is None:
            raise BadTarget("webhook: this deployment signs no webhooks (no WEBHOOK_SECRET)")
        check_url(url, self.allow_private)
        host, port = host_of(url)
        addresses = await _resolve(host, port)
        if not self.allow_private:
            for address in addresses:
                if (why := address_refusal(address)) is not None:
                    raise BadTarget(f"webhook: {host} resolves to {why}")
        return Target(url, host, port, addresses[0])


async def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` has (an address written out is its own)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            found = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise BadTarget(f"webhook: {host} did not resolve within {RESOLVE_SECONDS:g}s") from None
    except (OSError, UnicodeError) as exc:
        raise BadTarget(f"webhook: {host} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise BadTarget(f"webhook: {host} has no address")
    return addresses
