"""A job store in Redis, shared by any number of gateways and workers.

:mod:`.layout` holds where it keeps what and the scripts that change it;
:mod:`.reachability`, riding out outages; :mod:`.mirrors`, this process's
mirrors of the logs it follows; :mod:`.store`, :class:`RedisStore` itself.
"""

from llm_worker.store.redis.layout import GROUP
from llm_worker.store.redis.mirrors import JOB_LOST
from llm_worker.store.redis.store import RedisStore

__all__ = ["GROUP", "JOB_LOST", "RedisStore"]
