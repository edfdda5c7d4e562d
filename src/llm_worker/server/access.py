"""Who may do what: API keys and their tenants, listen tokens, allowed origins.

With no key configured (neither ``API_KEYS`` nor ``API_KEYS_FILE``), anyone who
reaches the port may do anything, as one tenant. With keys, a connection
speaks for the tenant of the key it presents, and sees that tenant's jobs only;
or it presents a *listen token*, a capability for one job that ``resp_add``
hands out, and may only follow that job and ask its status. Origins are
checked whatever the keys: a browser page from an origin not allowed cannot
use the worker, even with a key. An *admin key*, one whose SHA-256
``ADMIN_KEYS`` lists, may also list every tenant's jobs; without keys, anyone may.

Keys are kept as their SHA-256 only. A listen token is ``lt1.<job>.<tenant>.<mac>``
(base64url parts), the MAC an HMAC-SHA256 under ``TOKEN_SECRET``, which every
gateway shares; it is worth nothing once its job has expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llm_worker.config import ConfigError, Settings, validation_problems
from llm_worker.running.webhook_targets import NO_TENANT_WEBHOOK, TenantWebhook
from llm_worker.store.limits import UNLIMITED, TenantLimits
from llm_worker.wire import errors, webhooks

log = logging.getLogger(__name__)

TOKEN_PREFIX = "lt1."


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection speaks for: a tenant, or, with a listen token, one job of it."""

    tenant: str
    job_id: str | None = None
    admin: bool = False
    """Whether it may list every tenant's jobs (``GET /v1/jobs``)."""

    @property
    def listen_only(self) -> bool:
        return self.job_id is not None

    def may_see(self, tenant: str, job_id: str) -> bool:
        """Whether a job of ``tenant`` exists for this principal at all."""
        return tenant == self.tenant and self.job_id in (None, job_id)


# Without keys, anyone may do anything: listing every job included.
ANYONE = Principal("", admin=True)


def key_hash(key: str) -> str:
    # Whatever a client sends hashes: a lone surrogate cannot be a key, but must not raise.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Access:
    keys: dict[str, str] = field(default_factory=dict, repr=False)
    """SHA-256 (hex) of each key -> its tenant."""
    admins: frozenset[str] = field(default=frozenset(), repr=False)
    """SHA-256 (hex) of the keys that may list every tenant's jobs."""
    limits: dict[str, TenantLimits] = field(default_factory=dict)
    default_limits: TenantLimits = UNLIMITED
    """The limits of a tenant with none of its own (with keys only)."""
    token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    origins: frozenset[str] | None = None
    """Origins allowed besides the worker's own; ``None``: any."""
    metrics_key: bytes | None = field(default=None, repr=False)
    """The key ``/metrics`` asks for (``METRICS_KEY``), if one is set."""
    webhooks: dict[str, TenantWebhook] = field(default_factory=dict, repr=False)
    """Tenants' own webhook URL and secret (``API_KEYS_FILE``)."""

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def metrics_refusal(self, credential: str | None) -> str | None:
        """Why ``credential`` may not read ``/metrics`` (an error code), or ``None`` if it
        may: ``METRICS_KEY`` when set; else, with API keys, an admin key; else anyone.
        Its figures name tenants and the models they use."""
        if self.metrics_key is not None:
            given = _utf8(credential or "")
            return None if hmac.compare_digest(given, self.metrics_key) else errors.UNAUTHORIZED
        if not self.enabled:
            return None
        principal = self.authenticate(credential)
        if principal is None or principal.listen_only:
            return errors.UNAUTHORIZED
        return None if principal.admin else errors.ADMIN_ONLY

    def authenticate(self, credential: str | None) -> Principal | None:
        """The principal a key or listen token stands for; ``None`` if it stands for none."""
        if not self.enabled:
            return ANYONE
        if not credential:
            return None
        if credential.startswith(TOKEN_PREFIX):
            return self._verify(credential)
        digest = key_hash(credential)
        tenant = self.keys.get(digest)
        return Principal(tenant, admin=digest in self.admins) if tenant is not None else None

    def take_keys(self, other: Access) -> None:
        """Take ``other``'s keys, admins and tenants' limits, in place (every part that
        holds this object sees them), keeping this one's token secret and origins."""
        self.keys, self.admins = other.keys, other.admins
        self.limits, self.default_limits = other.limits, other.default_limits
        self.webhooks = other.webhooks

    def webhook_of(self, tenant: str) -> TenantWebhook:
        """``tenant``'s own webhook settings (none without keys)."""
        return self.webhooks.get(tenant, NO_TENANT_WEBHOOK) if self.enabled else NO_TENANT_WEBHOOK

    def tenant_limits(self, tenant: str) -> TenantLimits:
        if not self.enabled:
            return UNLIMITED
        return self.limits.get(tenant, self.default_limits)

    def listen_token(self, job_id: str, tenant: str) -> str:
        """A capability to follow ``job_id`` (and ask its status), and nothing else."""
        body = f"{_b64(job_id.encode())}.{_b64(tenant.encode())}"
        return f"{TOKEN_PREFIX}{body}.{self._mac(body)}"

    def _verify(self, token: str) -> Principal | None:
        body, _, mac = token[len(TOKEN_PREFIX) :].rpartition(".")
        # As bytes: compare_digest refuses a str that is not ASCII (a client's é).
        if not hmac.compare_digest(_utf8(mac), _utf8(self._mac(body))):
            return None
        job, _, tenant = body.partition(".")
        try:
            return Principal(_unb64(tenant), job_id=_unb64(job))
        except ValueError:
            return None

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.token_secret, _utf8(body), hashlib.sha256).digest())

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Requests without ``Origin`` (servers, scripts) are not a browser's: allowed.

        A browser's is allowed from the worker's own origin (``host``, as the
        request names it) and from those listed.
        """
        if origin is None or self.origins is None:
            return True
        normal = _origin(origin)
        if host and urlsplit(normal).netloc == host.lower():
            return True
        return normal in self.origins


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not base64url") from exc


def _origin(origin: str) -> str:
    parts = urlsplit(origin.strip().lower())
    return f"{parts.scheme}://{parts.netloc}"


# -- configuration --------------------------------------------------------------


class _TenantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(min_length=1)
    """SHA-256 of each key, hex, optionally written ``sha256:<hex>``."""
    max_running_jobs: int | None = Field(None, ge=1)
    max_queued_jobs: int | None = Field(None, ge=0)
    adds_per_minute: int | None = Field(None, ge=1)
    webhook_url: str | None = None
    """Where this tenant's jobs that name no webhook report their end."""
    webhook_secret: str | None = Field(None, repr=False)
    """The key this tenant's webhooks are signed with, ``whsec_<base64>``."""

    @field_validator("keys")
    @classmethod
    def _hashes(cls, keys: list[str]) -> list[str]:
        hashes = []
        for key in keys:
            digest = key.removeprefix("sha256:").lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    "each key is its SHA-256 in hex (`llm-worker new-key` prints one), "
                    "not the key itself"
                )
            hashes.append(digest)
        return hashes


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, _TenantEntry] = Field(default_factory=dict)


def load_access(settings: Settings) -> Access:
    """The access rules the settings describe; :class:`ConfigError` when they cannot work."""
    default_limits = TenantLimits(
        max_running_jobs=settings.tenant_max_running_jobs or None,
        max_queued_jobs=settings.tenant_max_queued_jobs,
        adds_per_minute=settings.tenant_adds_per_minute or None,
    )
    keys = _plain_keys(settings.api_keys.get_secret_value())
    limits: dict[str, TenantLimits] = {}
    tenant_webhooks: dict[str, TenantWebhook] = {}
    if settings.api_keys_file is not None:
        tenants = _read_keys_file(settings.api_keys_file).tenants
        if not tenants:
            raise ConfigError(
                f"API_KEYS_FILE {settings.api_keys_file} names no key: give a tenant one "
                "(`llm-worker new-key TENANT` prints the lines), or unset API_KEYS_FILE "
                "to run without keys"
            )
        for tenant, entry in tenants.items():
            for digest in entry.keys:
                if digest in keys and keys[digest] != tenant:
                    raise ConfigError(f"API_KEYS_FILE: a key of {tenant!r} is another tenant's too")
                keys[digest] = tenant
            limits[tenant] = _tenant_limits(entry, default_limits)
            if entry.webhook_url is not None or entry.webhook_secret is not None:
                tenant_webhooks[tenant] = _tenant_webhook(tenant, entry, settings)
    secret = settings.token_secret.get_secret_value() if settings.token_secret else ""
    access = Access(
        keys=keys,
        admins=_admin_keys(settings.admin_keys, keys),
        limits=limits,
        default_limits=default_limits,
        origins=_origins(settings.allowed_origins),
        webhooks=tenant_webhooks,
    )
    if settings.metrics_key is not None:
        access.metrics_key = _utf8(settings.metrics_key.get_secret_value())
    if secret:
        access.token_secret = secret.encode()
    elif keys:
        log.warning(
            "TOKEN_SECRET is not set: listen tokens are signed with a key of this process's "
            "own, valid on this process only until it stops"
        )
    return access


def _plain_keys(api_keys: str) -> dict[str, str]:
    """``API_KEYS``' keys, by their hash: each its own tenant, ``key-`` and its hash's
    start. A setting that is there but names no key is a mistake, not a wish to run
    open."""
    keys = {}
    for key in filter(None, (k.strip() for k in api_keys.split(","))):
        digest = key_hash(key)
        keys[digest] = f"key-{digest[:8]}"
    if api_keys.strip() and not keys:
        raise ConfigError(
            "API_KEYS is set but names no key (only commas and spaces); unset it to run "
            "without keys"
        )
    return keys


def _tenant_limits(entry: _TenantEntry, default: TenantLimits) -> TenantLimits:
    """A tenant's limits: its entry's in the keys file, the defaults where it names none."""
    return TenantLimits(
        max_running_jobs=entry.max_running_jobs or default.max_running_jobs,
        max_queued_jobs=(
            entry.max_queued_jobs if entry.max_queued_jobs is not None else default.max_queued_jobs
        ),
        adds_per_minute=entry.adds_per_minute or default.adds_per_minute,
    )


def reload_keys(access: Access, settings: Settings) -> str:
    """Give ``access`` the keys, admins and tenants ``settings`` now describe (on SIGHUP):
    what it holds now, for the log. :class:`ConfigError`, with ``access`` unchanged,
    when they cannot work or would turn keys on or off (that takes a restart: with
    no keys, anyone may do anything)."""
    fresh = load_access(settings)
    if fresh.enabled != access.enabled:
        raise ConfigError(
            "a reload cannot turn keys "
            + ("off: API_KEYS and API_KEYS_FILE name none" if access.enabled else "on")
            + "; restart to do that"
        )
    access.take_keys(fresh)
    return f"{len(fresh.keys)} keys of {len(set(fresh.keys.values()))} tenants"


def listens_on_loopback(address: str) -> bool:
    """Whether only this machine can reach ``address`` (every address the name has is
    loopback)."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in found
    )


def open_to_all_warning(access: Access, address: str) -> str | None:
    """What to warn of at start when anyone who reaches ``address`` may do anything."""
    if access.enabled or listens_on_loopback(address):
        return None
    return (
        f"no API keys are configured (API_KEYS, API_KEYS_FILE) and LISTEN_ADDRESS {address} "
        "is reachable beyond this machine: anyone who reaches the port may add jobs and "
        "read every job"
    )


def _admin_keys(listed: str, keys: dict[str, str]) -> frozenset[str]:
    """The hashes ``ADMIN_KEYS`` lists; each must be that of a key configured."""
    admins = set()
    for entry in filter(None, (e.strip() for e in listed.split(","))):
        digest = entry.removeprefix("sha256:").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(
                "ADMIN_KEYS: each entry is the SHA-256 of a key in hex "
                "(`llm-worker new-key` prints one), not the key itself"
            )
        if digest not in keys:
            raise ConfigError(
                f"ADMIN_KEYS: sha256:{digest[:12]}... is the SHA-256 of no key "
                "in API_KEYS or API_KEYS_FILE"
            )
        admins.add(digest)
    return frozenset(admins)


def _tenant_webhook(tenant: str, entry: _TenantEntry, settings: Settings) -> TenantWebhook:
    """A tenant's webhook settings, checked as ``WEBHOOK_URL`` and ``WEBHOOK_SECRET`` are."""
    where = f"API_KEYS_FILE: tenant {tenant!r}"
    try:
        if entry.webhook_url is not None:
            webhooks.check_url(entry.webhook_url, settings.webhook_allow_private_targets)
        key = webhooks.secret_bytes(entry.webhook_secret) if entry.webhook_secret else None
    except ValueError as exc:  # BadTarget included
        raise ConfigError(f"{where}: {exc}") from None
    return TenantWebhook(entry.webhook_url, key)


def _read_keys_file(path: Path) -> _KeysFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"API_KEYS_FILE {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"API_KEYS_FILE {path} is not valid TOML: {exc}") from exc
    try:
        return _KeysFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"API_KEYS_FILE {path}: {validation_problems(exc)}") from None


def _origins(text: str) -> frozenset[str] | None:
    listed = [o.strip() for o in text.split(",") if o.strip()]
    if "*" in listed:
        return None
    return frozenset(_origin(o) for o in listed)
