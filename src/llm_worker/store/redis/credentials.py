"""Whether Redis takes the credentials ``STORE_URL`` gives, asked once at start.

A wrong or missing password is no outage to ride out: it stops the start at
once, in one line that names the setting and shows no password.
"""

from __future__ import annotations

import redis
from redis.exceptions import AuthenticationError, AuthorizationError

from llm_worker.ops.redaction import redact_url, url_secrets
from llm_worker.store.base import StoreError
from llm_worker.store.redis.reachability import UNREACHABLE

# A Redis that does not answer (black-holed) delays the start by this much more at most.
CHECK_TIMEOUT = 2.0


def check_credentials(url: str, *, timeout: float = CHECK_TIMEOUT) -> None:
    """Raise :class:`StoreError` if Redis at ``url`` refuses its credentials, or if the
    URL cannot be used at all (an option redis-py does not know). A Redis that cannot
    be reached passes: the start rides that out (``REDIS_OUTAGE_GRACE_SECONDS``)."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        raise StoreError(f"STORE_URL {redact_url(url)}: {exc}") from None
    try:
        client.ping()
    except (TypeError, ValueError) as exc:  # options in its query that Redis has not
        raise StoreError(f"STORE_URL {redact_url(url)}: {exc}") from None
    except (AuthenticationError, AuthorizationError) as exc:
        said = (
            "Redis refused its password"
            if url_secrets(url)
            else "Redis wants a password and it gives none"
        )
        raise StoreError(f"STORE_URL {redact_url(url)}: {said} ({exc})") from None
    except UNREACHABLE:
        pass
    finally:
        client.close()
