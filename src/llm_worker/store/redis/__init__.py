"""A job store in Redis, shared by any number of gateways and workers.

:mod:`.store` is :class:`RedisStore`, the front; its docstring says which module
holds which part (keys, scripts, claims, outbox, limits, mirrors, ...).
"""

from llm_worker.store.redis.layout import GROUP
from llm_worker.store.redis.mirrors import JOB_LOST
from llm_worker.store.redis.store import RedisStore

__all__ = ["GROUP", "JOB_LOST", "RedisStore"]
