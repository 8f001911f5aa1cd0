"""In-process store: a byte budget, LFU eviction (ties: LRU) and exact TTLs at O(log n) per get/set.

Frequencies live in a doubly linked list of buckets (lowest count first), each bucket an
OrderedDict in order of last use, so the victim is always the head bucket's first entry and a
use moves an entry to the next bucket in O(1) (the constant-time LFU of Shah, Mitra and Matani).
Expiry deadlines sit in a min-heap swept before every write, so expired entries are freed before
anything live is evicted; no background task is needed.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable

from voxwire_server.storage.base import StoreStats, StoreUnavailable, check_ttl_s

ENTRY_OVERHEAD_BYTES = 64
"""Charged per entry on top of len(key) + len(value): the budget should roughly track real memory."""

_COMPACT_MIN_ITEMS = 64


class _Bucket:
    """All entries used exactly `count` times, least recently used first."""

    __slots__ = ("count", "entries", "prev", "next")

    def __init__(self, count: int) -> None:
        self.count = count
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.prev: _Bucket | None = None
        self.next: _Bucket | None = None


class _Entry:
    __slots__ = ("key", "value", "owner", "expires_at", "deadline_seq", "charge_bytes", "bucket")

    def __init__(self, key: str, bucket: _Bucket) -> None:
        self.key = key
        self.value = b""
        self.owner = ""
        self.expires_at: float | None = None
        self.deadline_seq = -1  # which heap item is this entry's current deadline
        self.charge_bytes = 0
        self.bucket = bucket


def entry_charge_bytes(key: str, value: bytes) -> int:
    """What one entry costs against max_bytes."""
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


class MemoryStore:
    """The default store: no network, bounded by max_bytes, lost on restart."""

    name = "memory"

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._owners: dict[str, set[str]] = {}
        self._head: _Bucket | None = None  # the lowest use count
        self._used_bytes = 0
        # (expires_at, seq, entry): seq is unique, so entries are never compared.
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._closed = False

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def used_bytes(self) -> int:
        """Charged bytes of the entries held, expired ones not yet swept included."""
        return self._used_bytes

    async def get(self, key: str) -> bytes | None:
        self._check_open()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= self._clock():
            self._remove(entry)
            return None
        self._touch(entry)
        return entry.value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set_many(self, items: list[tuple[str, bytes]], *, ttl_s: float | None = None) -> None:
        for key, value in items:
            await self.set(key, value, ttl_s=ttl_s)

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None, owner: str = "") -> None:
        self._check_open()
        check_ttl_s(ttl_s)
        if type(value) is not bytes:
            value = bytes(value)  # never keep a caller's mutable buffer
        now = self._clock()
        self._sweep_expired(now)
        entry = self._entries.get(key)
        charge_bytes = entry_charge_bytes(key, value)
        if charge_bytes > self._max_bytes:
            if entry is not None:
                self._remove(entry)  # the old value must not outlive a set that replaced it
            return
        if entry is None:
            while self._used_bytes + charge_bytes > self._max_bytes:
                self._evict_one(keep=None)
            entry = self._link_new(key)
            self._entries[key] = entry
        else:
            # An overwrite keeps the key's use count and counts as one more use, as in Redis.
            self._used_bytes -= entry.charge_bytes
            self._unindex_owner(entry)
            self._touch(entry)
        entry.value = value
        entry.charge_bytes = charge_bytes
        self._used_bytes += charge_bytes
        entry.owner = owner
        if owner:
            self._owners.setdefault(owner, set()).add(key)
        entry.expires_at = None if ttl_s is None else now + ttl_s
        entry.deadline_seq = -1
        if entry.expires_at is not None:
            entry.deadline_seq = next(self._seq)
            heapq.heappush(self._deadlines, (entry.expires_at, entry.deadline_seq, entry))
        while self._used_bytes > self._max_bytes:  # only after a larger overwrite
            self._evict_one(keep=entry)

    async def add(self, key: str, value: bytes) -> bool:
        if await self.get(key) is not None:
            return False
        await self.set(key, value)
        return key in self._entries

    async def delete(self, key: str) -> bool:
        self._check_open()
        entry = self._entries.get(key)
        if entry is None:
            return False
        live = entry.expires_at is None or entry.expires_at > self._clock()
        self._remove(entry)
        return live

    async def purge_owner(self, owner: str) -> int:
        self._check_open()
        if not owner:
            return 0
        now = self._clock()
        purged = 0
        for key in list(self._owners.get(owner, ())):
            entry = self._entries[key]
            if entry.expires_at is None or entry.expires_at > now:
                purged += 1
            self._remove(entry)
        return purged

    async def stats(self, prefix: str = "") -> StoreStats:
        self._check_open()
        now = self._clock()
        entries = value_bytes = 0
        for key, entry in self._entries.items():
            if key.startswith(prefix) and (entry.expires_at is None or entry.expires_at > now):
                entries += 1
                value_bytes += len(entry.value)
        return StoreStats(entries=entries, bytes=value_bytes)

    async def aclose(self) -> None:
        self._closed = True
        self._entries.clear()
        self._owners.clear()
        self._deadlines.clear()
        self._head = None
        self._used_bytes = 0

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the memory store is closed")

    # --- bookkeeping: no awaits below ----------------------------------------------------------

    def _link_new(self, key: str) -> _Entry:
        head = self._head
        if head is None or head.count != 1:
            bucket = _Bucket(1)
            bucket.next = head
            if head is not None:
                head.prev = bucket
            self._head = head = bucket
        entry = _Entry(key, head)
        head.entries[key] = entry
        return entry

    def _touch(self, entry: _Entry) -> None:
        current = entry.bucket
        target = current.next
        if target is None or target.count != current.count + 1:
            target = _Bucket(current.count + 1)
            target.prev, target.next = current, current.next
            if current.next is not None:
                current.next.prev = target
            current.next = target
        del current.entries[entry.key]
        target.entries[entry.key] = entry
        entry.bucket = target
        if not current.entries:
            self._unlink_bucket(current)

    def _unlink_bucket(self, bucket: _Bucket) -> None:
        if bucket.prev is None:
            self._head = bucket.next
        else:
            bucket.prev.next = bucket.next
        if bucket.next is not None:
            bucket.next.prev = bucket.prev

    def _evict_one(self, keep: _Entry | None) -> None:
        """Evict the least used entry (ties: least recently used), never `keep`."""
        bucket = self._head
        assert bucket is not None, "over budget with nothing to evict"
        victim = next(iter(bucket.entries.values()))
        if victim is keep:  # keep was just used: it is last in its bucket, so alone in this one
            assert bucket.next is not None, "over budget with nothing else to evict"
            victim = next(iter(bucket.next.entries.values()))
        self._remove(victim)

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        bucket = entry.bucket
        del bucket.entries[entry.key]
        if not bucket.entries:
            self._unlink_bucket(bucket)
        self._used_bytes -= entry.charge_bytes
        self._unindex_owner(entry)

    def _unindex_owner(self, entry: _Entry) -> None:
        if not entry.owner:
            return
        keys = self._owners[entry.owner]
        keys.discard(entry.key)
        if not keys:
            del self._owners[entry.owner]

    def _sweep_expired(self, now: float) -> None:
        """Free expired entries before anything live is evicted; drop heap items of gone entries."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, seq, entry = heapq.heappop(deadlines)
            if entry.deadline_seq == seq and self._entries.get(entry.key) is entry:
                self._remove(entry)
        # Each live entry owns at most one heap item: past twice that, most items are stale.
        if len(deadlines) > _COMPACT_MIN_ITEMS and len(deadlines) > 2 * len(self._entries):
            self._deadlines = [
                item
                for item in deadlines
                if item[2].deadline_seq == item[1] and self._entries.get(item[2].key) is item[2]
            ]
            heapq.heapify(self._deadlines)
