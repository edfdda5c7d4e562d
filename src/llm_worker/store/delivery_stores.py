"""Which webhook deliveries' store a ``STORE_URL`` means: the one beside its jobs."""

from __future__ import annotations

from pathlib import Path

from llm_worker.store.deliveries import DeliveryStore, MemoryDeliveries


def open_deliveries(
    store_url: str, *, prefix: str = "llmw", synchronous: str = "FULL"
) -> DeliveryStore:
    """The deliveries of the store ``store_url`` names (which :func:`~llm_worker.store.open_store`
    has checked): beside its jobs, as durable as they are."""
    scheme, _, rest = store_url.partition("://")
    if scheme == "sqlite":
        from llm_worker.store.sqlite_deliveries import SQLiteDeliveries, deliveries_path

        return SQLiteDeliveries(deliveries_path(Path(rest[1:])), synchronous)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from llm_worker.store.redis.deliveries import RedisDeliveries

        return RedisDeliveries(
            f"{scheme.removesuffix('+cluster')}://{rest}",
            prefix=prefix,
            cluster=scheme.endswith("+cluster"),
        )
    return MemoryDeliveries()
