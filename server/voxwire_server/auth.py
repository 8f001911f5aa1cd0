"""API keys → principals (tenant, roles, priority), and the principal of the call in progress.

The key file is TOML, one `[[key]]` table per key:

    [[key]]
    id = "acme-app"        # names the key in logs and metrics; never the secret
    sha256 = "9f86d0..."   # SHA-256 (hex) of the key the client sends; or `secret = "..."`
    tenant = "acme"        # every request made with this key is this tenant's
    roles = ["user"]       # user, admin, operator
    priority = 0           # admission class: higher keeps its share under load
    user = ""              # optional: the key acts for this one user only

Roles: `user` may recognize and synthesize; `admin` may purge its own tenant's users; `operator`
may read the server's statistics, warm the shared cache tier and purge any tenant's users.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxwire_server.errors import ConfigError, InvalidInput, PermissionDenied, Unauthenticated

USER, ADMIN, OPERATOR = "user", "admin", "operator"
ROLES = frozenset({USER, ADMIN, OPERATOR})
# Tenant, user and key ids: short and plain (they reach logs, metrics labels and cache keys).
MAX_ID_CHARS = 128
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MIN_SECRET_CHARS = 16
MAX_PRIORITY = 9


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. authenticated=False is the embedded single-user server with auth off: its
    caller is trusted with every role, and the ids a request carries are taken as sent."""

    tenant_id: str
    roles: frozenset[str] = field(default=ROLES)
    priority: int = 0
    key_id: str = ""
    # Set: this key acts for this one user of its tenant.
    user_id: str = ""
    authenticated: bool = True


# Auth off (loopback only): one trusted caller.
LOCAL = Principal(tenant_id="", priority=MAX_PRIORITY, authenticated=False, key_id="local")
# A call that needs no credentials (health), with auth on: no roles, no tenant.
ANONYMOUS = Principal(tenant_id="", roles=frozenset(), key_id="anonymous")

# Outside a call the transport set up, nobody: the default grants nothing.
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("voxwire_principal", default=ANONYMOUS)


def current() -> Principal:
    """The principal of the call in progress (set by the transport before the handler runs)."""
    return _current.get()


def use(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset(token: contextvars.Token[Principal]) -> None:
    # A response generator closed late (by the collector) runs in another context: nothing to undo.
    with contextlib.suppress(ValueError):
        _current.reset(token)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_id(kind: str, value: str) -> None:
    """Ids from a request body: bounded and plain, or empty."""
    if value and not _ID.fullmatch(value):
        raise InvalidInput(f"{kind} must be 1 to {MAX_ID_CHARS} letters, digits or . _ : @ - (or empty)")


def scoped_ids(body_tenant: str, body_user: str) -> tuple[str, str]:
    """The (tenant, user) a request acts for: the tenant from its credentials, never its body (a body
    tenant that differs is refused), and the user named in the body unless the key is bound to one."""
    check_id("tenant_id", body_tenant)
    check_id("user_id", body_user)
    p = current()
    if not p.authenticated:
        return body_tenant, body_user
    if body_tenant and body_tenant != p.tenant_id:
        raise PermissionDenied("tenant_id differs from the tenant of this API key")
    if p.user_id:
        if body_user and body_user != p.user_id:
            raise PermissionDenied("user_id differs from the user this API key is bound to")
        return p.tenant_id, p.user_id
    return p.tenant_id, body_user


class ApiKeys:
    """The keys a server accepts, by the SHA-256 of the key (the file need not hold the keys)."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._by_digest = dict(principals)

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: str) -> ApiKeys:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"api_keys: cannot read {path!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"api_keys: {path!r} is not valid TOML: {exc}") from None
        return cls.parse(data, source=path)

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str = "api keys") -> ApiKeys:
        entries = data.get("key")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{source}: no [[key]] tables")
        principals: dict[str, Principal] = {}
        ids: set[str] = set()
        for n, entry in enumerate(entries, 1):
            digest, principal = _entry(entry, f"{source}: key {n}")
            if digest in principals:
                raise ConfigError(f"{source}: key {n} ({principal.key_id}) repeats an earlier key")
            if principal.key_id in ids:
                raise ConfigError(f"{source}: key id {principal.key_id!r} is used twice")
            ids.add(principal.key_id)
            principals[digest] = principal
        return cls(principals)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """The principal of `authorization: Bearer <key>`; Unauthenticated when there is none."""
        values = [v for k, v in metadata if k.lower() == "authorization"]
        if not values:
            raise Unauthenticated("missing credentials: send the metadata 'authorization: Bearer <API key>'")
        if len(values) > 1:
            raise Unauthenticated("more than one authorization header")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, key = value.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization must be 'Bearer <API key>'")
        digest = key_digest(key.strip())
        # Looked up by digest: the time a lookup takes tells nothing about a stored key's prefix.
        principal = self._by_digest.get(digest)
        if principal is None:
            raise Unauthenticated("unknown API key")
        return principal


def _entry(entry: Any, where: str) -> tuple[str, Principal]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - {"id", "sha256", "secret", "tenant", "roles", "priority", "user"}
    if unknown:
        raise ConfigError(f"{where}: unknown fields {sorted(unknown)}")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise ConfigError(f"{where}: id must be 1 to {MAX_ID_CHARS} letters, digits or . _ : @ -")
    where = f"{where} ({key_id})"
    if ("sha256" in entry) == ("secret" in entry):
        raise ConfigError(f"{where}: give exactly one of sha256 (recommended) and secret")
    if "sha256" in entry:
        digest = entry["sha256"]
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise ConfigError(f"{where}: sha256 must be 64 hex digits (sha256sum of the key)")
        digest = digest.lower()
    else:
        secret = entry["secret"]
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS or secret != secret.strip():
            raise ConfigError(f"{where}: secret must be at least {MIN_SECRET_CHARS} characters, no spaces")
        digest = key_digest(secret)
    tenant = entry.get("tenant")
    if not isinstance(tenant, str) or not _ID.fullmatch(tenant):
        raise ConfigError(f"{where}: tenant must be 1 to {MAX_ID_CHARS} letters, digits or . _ : @ -")
    roles = entry.get("roles", [USER])
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{where}: roles must be a non-empty list of {sorted(ROLES)}")
    if set(roles) - ROLES:
        raise ConfigError(f"{where}: unknown roles {sorted(set(roles) - ROLES)}; known: {sorted(ROLES)}")
    priority = entry.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
        raise ConfigError(f"{where}: priority must be an integer 0..9")
    user = entry.get("user", "")
    if not isinstance(user, str) or (user and not _ID.fullmatch(user)):
        raise ConfigError(
            f"{where}: user must be 1 to {MAX_ID_CHARS} letters, digits or . _ : @ - (or absent)"
        )
    return digest, Principal(
        tenant_id=tenant, roles=frozenset(roles), priority=priority, key_id=key_id, user_id=user
    )
