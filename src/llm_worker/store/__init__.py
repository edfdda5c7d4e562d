"""Job stores: the seam between gateways and workers (see :mod:`.base`)."""

from llm_worker.config import Settings
from llm_worker.store.base import (
    JobStore,
    NotOwner,
    QueueFull,
    StoreError,
    StoreStats,
    UnknownJob,
)
from llm_worker.store.memory import MemoryStore

__all__ = [
    "JobStore",
    "MemoryStore",
    "NotOwner",
    "QueueFull",
    "StoreError",
    "StoreStats",
    "UnknownJob",
    "open_store",
]


def open_store(settings: Settings) -> JobStore:
    """The store the settings ask for."""
    return MemoryStore(queue_max=settings.queue_max, job_ttl=settings.job_ttl_seconds)
