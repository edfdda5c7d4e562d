"""Job stores: the seam between gateways and workers (see :mod:`.base`)."""

from collections.abc import Callable
from pathlib import Path

from llm_worker.config import ConfigError, Settings
from llm_worker.ops.redaction import redact_url
from llm_worker.store.base import (
    JobStore,
    NotOwner,
    QueueFull,
    RateLimited,
    StoreError,
    StoreStats,
    StoreUnavailable,
    UnknownJob,
    Unstorable,
)
from llm_worker.store.limits import TenantLimits
from llm_worker.store.memory import MemoryStore

__all__ = [
    "JobStore",
    "MemoryStore",
    "NotOwner",
    "QueueFull",
    "RateLimited",
    "StoreError",
    "StoreStats",
    "StoreUnavailable",
    "UnknownJob",
    "Unstorable",
    "open_store",
]


def open_store(
    settings: Settings,
    limits: Callable[[str], TenantLimits] | None = None,
    *,
    follows: bool = True,
) -> JobStore:
    """The store ``STORE_URL`` names, not started yet (an SQLite file is locked already).

    ``limits`` says what each tenant may have at once (see :mod:`llm_worker.server.access`);
    ``follows`` whether this process follows jobs' logs (it serves listeners).
    """
    url = settings.store_url
    scheme, sep, rest = url.partition("://")
    common = {
        "queue_max": settings.queue_max,
        "queue_max_bytes": settings.queue_max_bytes,
        "job_ttl": settings.job_ttl_seconds,
        "tombstone_ttl": settings.tombstone_seconds,
        "limits": limits,
    }
    if scheme == "memory" and sep:
        return MemoryStore(**common)
    if scheme == "sqlite" and sep and rest.startswith("/") and len(rest) > 1:
        from llm_worker.store.sqlite import SQLiteStore

        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
        store = SQLiteStore(
            Path(rest[1:]),
            synchronous=settings.sqlite_synchronous,
            **common,
        )
        store.lock()
        return store
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster") and sep:
        from llm_worker.store.redis import RedisStore
        from llm_worker.store.redis.credentials import check_credentials

        cluster = scheme.endswith("+cluster")
        redis_url = f"{scheme.removesuffix('+cluster')}://{rest}"
        check_credentials(redis_url)
        return RedisStore(
            redis_url,
            cluster=cluster,
            follows=follows,
            prefix=settings.redis_prefix,
            heartbeat_timeout=settings.worker_heartbeat_timeout_seconds,
            outage_grace=settings.redis_outage_grace_seconds,
            **common,
        )
    raise ConfigError(
        f"STORE_URL {redact_url(url)!r} is not one of sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db, redis://host:port/db, redis+cluster://host:port "
        "or memory://"
    )
