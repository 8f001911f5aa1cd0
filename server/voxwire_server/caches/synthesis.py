"""The synthesis caches: whole replies (phrases) and template prefixes, each in two tiers.

- global: filled by Warmup, shared by every tenant, no TTL (LFU eviction only);
- personal: filled by requests, scoped to one tenant's user (salted keys, owner tag for PurgeUser),
  with a short TTL.

A reply's key covers everything that changes its bytes: the normalised text or SSML, voice,
speaking rate, encoding, sample rate and the voice model's version. A prefix's key covers the
template, voice, rate and model version (prefixes are kept as native-rate audio and encoded per
request). Lookups try personal, then global. A store that is down is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voxwire_server.domain import CachePolicy, Encoding, RequestContext
from voxwire_server.storage import Store, StoreStats, StoreUnavailable, pack, unpack
from voxwire_server.storage.codec import CodecError

log = logging.getLogger(__name__)

PHRASE = "tts.phrase"
PREFIX = "tts.prefix"
GLOBAL = "global"
PERSONAL = "personal"
# Bump when the layout of a stored value changes: old entries are then simply never found.
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """A reply as it was streamed: encoded chunks (no WAV header) and their durations."""

    chunks: tuple[bytes, ...]
    durations_ms: tuple[int, ...]
    sample_rate_hz: int


@dataclass(frozen=True, slots=True)
class TierStats:
    tier: str
    entries: int
    hits: int
    misses: int
    bytes: int


def normalized(text: str) -> str:
    """Whitespace runs collapse: "Okay,  lights on." and "Okay, lights on." are one phrase."""
    return " ".join(text.split())


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def phrase_key(
    kind: str,
    content: str,
    *,
    voice: str,
    speaking_rate: float,
    encoding: Encoding,
    sample_rate_hz: int,
    model: str,
) -> str:
    return _digest(_FORMAT, kind, normalized(content), voice, round(speaking_rate, 3), encoding.value,
                   sample_rate_hz, model)  # fmt: skip


def prefix_key(template: str, *, voice: str, speaking_rate: float, model: str) -> str:
    return _digest(_FORMAT, "template", normalized(template), voice, round(speaking_rate, 3), model)


def owner_of(tenant_id: str, user_id: str) -> str:
    return _digest("owner", tenant_id, user_id)


class SynthesisCache:
    def __init__(
        self,
        store: Store,
        *,
        personal_ttl_s: float,
        on_lookup: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._personal_ttl_s = personal_ttl_s
        self._on_lookup = on_lookup
        self._hits: dict[str, int] = {}
        self._misses: dict[str, int] = {}

    @property
    def store(self) -> Store:
        return self._store

    def _store_key(self, kind: str, tier: str, key: str, context: RequestContext | None) -> str:
        if tier == GLOBAL or context is None:
            return f"{kind}:g:{key}"
        # Salted per tenant and user: one tenant's keys say nothing about another's.
        return f"{kind}:u:{_digest(context.tenant_id, context.user_id, key)}"

    def _count(self, kind: str, tier: str, hit: bool) -> None:
        name = f"{kind}.{tier}"
        counts = self._hits if hit else self._misses
        counts[name] = counts.get(name, 0) + 1
        if self._on_lookup is not None:
            self._on_lookup(name, "hit" if hit else "miss")

    async def _get(self, kind: str, key: str, context: RequestContext) -> Any | None:
        if context.cache_policy is CachePolicy.BYPASS:
            return None
        # The user's own entries first: a prefix made again from a real reply (after a warmed-up
        # one failed the joint check) must win over the warmed-up one.
        for tier in (PERSONAL, GLOBAL):
            store_key = self._store_key(kind, tier, key, context)
            try:
                data = await self._store.get(store_key)
                value = unpack(data) if data is not None else None
            except StoreUnavailable as exc:
                log.warning("synthesis cache unavailable, treating as a miss: %s", exc)
                return None
            except CodecError:
                log.warning("dropping an unreadable %s entry", kind)
                value = None
                with contextlib.suppress(StoreUnavailable):
                    await self._store.delete(store_key)
            self._count(kind, tier, hit=value is not None)
            if value is not None:
                return value
        return None

    async def _put(self, kind: str, key: str, context: RequestContext | None, value: Any) -> bool:
        """context None: the global tier (Warmup). Returns whether the value was stored."""
        if context is not None and context.cache_policy is not CachePolicy.USE:
            return False
        tier = GLOBAL if context is None else PERSONAL
        try:
            await self._store.set(
                self._store_key(kind, tier, key, context),
                pack(value),
                ttl_s=None if context is None else self._personal_ttl_s,
                owner="" if context is None else owner_of(context.tenant_id, context.user_id),
            )
        except StoreUnavailable as exc:
            log.warning("synthesis cache unavailable, not storing: %s", exc)
            return False
        return True

    async def get_phrase(self, key: str, context: RequestContext) -> CachedAudio | None:
        value = await self._get(PHRASE, key, context)
        if not isinstance(value, dict):
            return None
        return CachedAudio(
            chunks=tuple(bytes(c) for c in value["chunks"]),
            durations_ms=tuple(int(d) for d in value["durations_ms"]),
            sample_rate_hz=int(value["sample_rate_hz"]),
        )

    async def put_phrase(self, key: str, context: RequestContext | None, audio: CachedAudio) -> bool:
        value = {
            "chunks": list(audio.chunks),
            "durations_ms": list(audio.durations_ms),
            "sample_rate_hz": audio.sample_rate_hz,
        }
        return await self._put(PHRASE, key, context, value)

    async def get_prefix(self, key: str, context: RequestContext) -> dict[str, Any] | None:
        value = await self._get(PREFIX, key, context)
        return value if isinstance(value, dict) else None

    async def put_prefix(self, key: str, context: RequestContext | None, value: dict[str, Any]) -> bool:
        return await self._put(PREFIX, key, context, value)

    async def purge_user(self, tenant_id: str, user_id: str) -> int:
        return await self._store.purge_owner(owner_of(tenant_id, user_id))

    async def stats(self) -> list[TierStats]:
        rows = []
        for kind in (PHRASE, PREFIX):
            for tier, scope in ((GLOBAL, "g"), (PERSONAL, "u")):
                name = f"{kind}.{tier}"
                try:
                    found = await self._store.stats(f"{kind}:{scope}:")
                except StoreUnavailable:
                    found = StoreStats(-1, -1)
                rows.append(
                    TierStats(
                        name, found.entries, self._hits.get(name, 0), self._misses.get(name, 0), found.bytes
                    )
                )
        return rows
