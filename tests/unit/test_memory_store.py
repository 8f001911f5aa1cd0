from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from voxwire_server.storage import MemoryStore, StoreStats, StoreUnavailable
from voxwire_server.storage.memory import ENTRY_OVERHEAD_BYTES, entry_charge_bytes


@dataclass
class FakeClock:
    now_s: float = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


VALUE = b"x" * 100
SLOT = entry_charge_bytes("k0", VALUE)  # every key in these tests has two characters


def store_for(entries: int, clock: FakeClock | None = None) -> MemoryStore:
    """A store with room for exactly `entries` entries of VALUE under two-character keys."""
    return MemoryStore(SLOT * entries, clock=clock or FakeClock())


async def keys_present(store: MemoryStore, keys: list[str]) -> list[str]:
    """Which keys are held, without counting as a use (stats does not touch entries)."""
    return [key for key in keys if (await store.stats(key)).entries]


async def test_set_get_overwrite_delete() -> None:
    store = store_for(4)
    assert await store.get("k0") is None
    await store.set("k0", b"one")
    assert await store.get("k0") == b"one"
    await store.set("k0", b"two")
    assert await store.get("k0") == b"two"
    assert await store.delete("k0") is True
    assert await store.delete("k0") is False
    assert await store.get("k0") is None
    assert store.used_bytes == 0
    assert store.name == "memory"


async def test_the_charge_is_key_plus_value_plus_overhead() -> None:
    store = store_for(4)
    await store.set("k0", VALUE)
    assert store.used_bytes == 2 + len(VALUE) + ENTRY_OVERHEAD_BYTES == SLOT


async def test_evicts_the_least_frequently_used_first() -> None:
    store = store_for(3)
    for key in ("k0", "k1", "k2"):
        await store.set(key, VALUE)
    for _ in range(3):
        await store.get("k0")
    await store.get("k2")  # uses: k0 4, k2 2, k1 1 (k1 was set before k2 but that does not matter)
    await store.set("k3", VALUE)
    assert await keys_present(store, ["k0", "k1", "k2", "k3"]) == ["k0", "k2", "k3"]
    await store.get("k3")
    await store.get("k3")  # k3: 3 uses, k2: 2
    await store.set("k4", VALUE)
    assert await keys_present(store, ["k0", "k2", "k3", "k4"]) == ["k0", "k3", "k4"]


async def test_ties_evict_the_least_recently_used() -> None:
    store = store_for(3)
    for key in ("k0", "k1", "k2"):
        await store.set(key, VALUE)
    for key in ("k2", "k0", "k1"):  # all have 2 uses now; k2 was used longest ago
        await store.get(key)
    await store.set("k3", VALUE)
    assert await keys_present(store, ["k0", "k1", "k2", "k3"]) == ["k0", "k1", "k3"]
    await store.set("k4", VALUE)  # k3 (1 use) goes before any entry used twice
    assert await keys_present(store, ["k0", "k1", "k3", "k4"]) == ["k0", "k1", "k4"]


async def test_a_new_entry_is_always_admitted() -> None:
    store = store_for(2)
    await store.set("k0", VALUE)
    await store.set("k1", VALUE)
    for _ in range(5):
        await store.get("k0")
        await store.get("k1")
    await store.set("k2", VALUE)  # k0 and k1 are both hotter; the older-used one goes
    assert await keys_present(store, ["k0", "k1", "k2"]) == ["k1", "k2"]


async def test_an_overwrite_keeps_the_use_count_and_counts_as_a_use() -> None:
    store = store_for(2)
    await store.set("k0", VALUE)
    await store.set("k1", VALUE)
    await store.get("k1")  # k1: 2 uses
    await store.set("k0", VALUE)  # k0: 2 uses, more recent than k1
    await store.set("k0", VALUE)  # k0: 3 uses
    await store.set("k2", VALUE)
    assert await keys_present(store, ["k0", "k1", "k2"]) == ["k0", "k2"]


async def test_a_larger_overwrite_evicts_others_but_keeps_itself() -> None:
    store = store_for(3)
    for key in ("k0", "k1", "k2"):
        await store.set(key, VALUE)
    await store.get("k0")
    await store.get("k1")
    await store.set("k2", VALUE + b"y")  # k0, k1, k2: 2 uses each; k0 was used longest ago
    assert await keys_present(store, ["k0", "k1", "k2"]) == ["k1", "k2"]
    assert await store.get("k2") == VALUE + b"y"
    assert store.used_bytes <= store.max_bytes


async def test_oversized_values_are_not_stored_and_evict_nothing() -> None:
    store = store_for(2)
    await store.set("k0", VALUE)
    await store.set("k1", b"z" * (store.max_bytes + 1))
    assert await store.get("k1") is None
    assert await store.get("k0") == VALUE
    await store.set("k0", b"z" * store.max_bytes)  # fits alone as a value, not with its overhead
    assert await store.get("k0") is None, "a refused set must not leave the old value behind"
    assert store.used_bytes == 0


async def test_an_entry_of_exactly_max_bytes_fits() -> None:
    store = store_for(1)
    await store.set("k0", VALUE)
    assert store.used_bytes == store.max_bytes
    assert await store.get("k0") == VALUE


async def test_a_zero_budget_stores_nothing() -> None:
    store = MemoryStore(0)
    await store.set("k0", b"")
    assert await store.get("k0") is None


async def test_the_budget_holds_under_many_sets() -> None:
    store = MemoryStore(10_000, clock=FakeClock())
    rng = random.Random(1)
    for i in range(2000):
        await store.set(f"key{rng.randrange(300)}", b"v" * rng.randrange(400))
        assert store.used_bytes <= store.max_bytes, i
    stats = await store.stats()
    assert stats.entries > 0
    assert stats.bytes + stats.entries * ENTRY_OVERHEAD_BYTES <= store.max_bytes


async def test_ttl_is_exact() -> None:
    clock = FakeClock()
    store = store_for(4, clock)
    await store.set("k0", VALUE, ttl_s=10)
    clock.advance(9.999)
    assert await store.get("k0") == VALUE
    clock.advance(0.001)
    assert await store.get("k0") is None
    assert store.used_bytes == 0, "an expired entry found by get is freed"


async def test_no_ttl_never_expires() -> None:
    clock = FakeClock()
    store = store_for(4, clock)
    await store.set("k0", VALUE)
    clock.advance(10**9)
    assert await store.get("k0") == VALUE


async def test_an_overwrite_replaces_the_ttl() -> None:
    clock = FakeClock()
    store = store_for(4, clock)
    await store.set("k0", VALUE, ttl_s=10)
    await store.set("k0", VALUE, ttl_s=100)
    await store.set("k1", VALUE, ttl_s=10)
    await store.set("k1", VALUE)
    clock.advance(50)
    await store.set("k2", VALUE)  # sweeps due deadlines: the replaced ones must not delete anything
    assert await store.get("k0") == VALUE
    assert await store.get("k1") == VALUE
    clock.advance(50)
    assert await store.get("k0") is None
    assert await store.get("k1") == VALUE


async def test_expired_entries_are_freed_before_live_ones_are_evicted() -> None:
    clock = FakeClock()
    store = store_for(3, clock)
    await store.set("k0", VALUE)
    await store.set("k1", VALUE, ttl_s=5)
    for _ in range(5):
        await store.get("k1")  # the most used entry, but it will expire
    await store.set("k2", VALUE)
    clock.advance(5)
    await store.set("k3", VALUE)
    assert await keys_present(store, ["k0", "k1", "k2", "k3"]) == ["k0", "k2", "k3"]


async def test_expired_entries_do_not_count_anywhere() -> None:
    clock = FakeClock()
    store = store_for(4, clock)
    await store.set("k0", VALUE, ttl_s=1, owner="u1")
    await store.set("k1", VALUE, owner="u1")
    clock.advance(1)
    assert await store.stats() == StoreStats(entries=1, bytes=len(VALUE))
    assert await store.delete("k0") is False
    await store.set("k2", VALUE, ttl_s=1, owner="u1")
    clock.advance(2)
    assert await store.purge_owner("u1") == 1
    assert await store.stats() == StoreStats(entries=0, bytes=0)


async def test_the_deadline_heap_stays_bounded_under_overwrites() -> None:
    store = MemoryStore(10**6, clock=FakeClock())
    for _ in range(10_000):
        await store.set("k0", VALUE, ttl_s=3600)
    assert len(store._deadlines) <= 200  # stale deadlines are compacted away


@pytest.mark.parametrize("ttl_s", [0, -1, float("nan"), float("inf")])
async def test_bad_ttls_are_refused(ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await store_for(1).set("k0", VALUE, ttl_s=ttl_s)


async def test_purge_owner_deletes_only_that_owners_entries() -> None:
    store = store_for(8)
    await store.set("k0", VALUE, owner="u1")
    await store.set("k1", VALUE, owner="u1")
    await store.set("k2", VALUE, owner="u2")
    await store.set("k3", VALUE)
    assert await store.purge_owner("u1") == 2
    assert await keys_present(store, ["k0", "k1", "k2", "k3"]) == ["k2", "k3"]
    assert await store.purge_owner("u1") == 0
    assert await store.purge_owner("") == 0, "the empty owner means no owner, not everything"
    assert await keys_present(store, ["k2", "k3"]) == ["k2", "k3"]


async def test_the_last_set_decides_the_owner() -> None:
    store = store_for(8)
    await store.set("k0", VALUE, owner="u1")
    await store.set("k0", VALUE, owner="u2")
    await store.set("k1", VALUE, owner="u1")
    await store.set("k1", VALUE)
    assert await store.purge_owner("u1") == 0
    assert await keys_present(store, ["k0", "k1"]) == ["k0", "k1"]
    assert await store.purge_owner("u2") == 1
    assert await keys_present(store, ["k0", "k1"]) == ["k1"]


async def test_evicted_and_deleted_entries_leave_the_owner_index() -> None:
    store = store_for(2)
    await store.set("k0", VALUE, owner="u1")
    await store.set("k1", VALUE, owner="u1")
    await store.delete("k1")
    await store.set("k2", VALUE)
    await store.set("k3", VALUE)  # evicts k0
    assert await store.purge_owner("u1") == 0
    assert await keys_present(store, ["k2", "k3"]) == ["k2", "k3"]


async def test_stats_by_prefix() -> None:
    store = MemoryStore(10_000)
    await store.set("tts:a", b"12345")
    await store.set("tts:b", b"")
    await store.set("asr:a", b"123")
    assert await store.stats() == StoreStats(entries=3, bytes=8)
    assert await store.stats("tts:") == StoreStats(entries=2, bytes=5)
    assert await store.stats("asr:") == StoreStats(entries=1, bytes=3)
    assert await store.stats("nope") == StoreStats(entries=0, bytes=0)


async def test_a_mutable_buffer_is_copied() -> None:
    store = MemoryStore(10_000)
    buffer = bytearray(b"abc")
    await store.set("k0", buffer)  # type: ignore[arg-type]  # callers may pass one anyway
    buffer[0] = ord("z")
    assert await store.get("k0") == b"abc"


async def test_a_closed_store_is_unavailable() -> None:
    store = MemoryStore(10_000)
    await store.set("k0", b"v")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.get("k0")
    with pytest.raises(StoreUnavailable):
        await store.set("k0", b"v")


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryStore(-1)


@dataclass
class _ModelEntry:
    value: bytes
    owner: str
    expires_at: float | None
    uses: int
    last_use: int


@dataclass
class _Model:
    """The eviction rule stated plainly (min over uses, then last use): slow but obviously right."""

    max_bytes: int
    entries: dict[str, _ModelEntry] = field(default_factory=dict)
    tick: int = 0

    def used(self) -> int:
        return sum(entry_charge_bytes(k, e.value) for k, e in self.entries.items())

    def live(self, entry: _ModelEntry, now: float) -> bool:
        return entry.expires_at is None or entry.expires_at > now

    def set(self, key: str, value: bytes, ttl_s: float | None, owner: str, now: float) -> None:
        self.entries = {k: e for k, e in self.entries.items() if self.live(e, now)}
        old = self.entries.pop(key, None)
        if entry_charge_bytes(key, value) > self.max_bytes:
            return
        if old is None:
            while self.used() + entry_charge_bytes(key, value) > self.max_bytes:
                self._evict(keep=None)
        self.tick += 1
        expires_at = None if ttl_s is None else now + ttl_s
        uses = 1 if old is None else old.uses + 1
        self.entries[key] = _ModelEntry(value, owner, expires_at, uses, self.tick)
        while self.used() > self.max_bytes:
            self._evict(keep=key)

    def _evict(self, keep: str | None) -> None:
        candidates = [k for k in self.entries if k != keep]
        del self.entries[min(candidates, key=lambda k: (self.entries[k].uses, self.entries[k].last_use))]

    def get(self, key: str, now: float) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None or not self.live(entry, now):
            self.entries.pop(key, None)
            return None
        self.tick += 1
        entry.uses += 1
        entry.last_use = self.tick
        return entry.value


@pytest.mark.parametrize("seed", range(5))
async def test_matches_a_reference_model_under_random_operations(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    store = MemoryStore(1500, clock=clock)
    model = _Model(1500)
    keys = [f"k{i}" for i in range(12)]
    for step in range(3000):
        clock.advance(rng.choice([0, 0, 0.5, 1, 3]))
        now = clock()
        key = rng.choice(keys)
        op = rng.random()
        if op < 0.45:
            value = bytes([step % 256]) * rng.randrange(0, 500)
            ttl_s = rng.choice([None, None, 1.0, 5.0, 20.0])
            owner = rng.choice(["", "", "u1", "u2"])
            await store.set(key, value, ttl_s=ttl_s, owner=owner)
            model.set(key, value, ttl_s, owner, now)
        elif op < 0.9:
            assert await store.get(key) == model.get(key, now), step
        elif op < 0.96:
            entry = model.entries.pop(key, None)
            assert await store.delete(key) == (entry is not None and model.live(entry, now)), step
        else:
            owner = rng.choice(["u1", "u2"])
            owned = [k for k, e in model.entries.items() if e.owner == owner]
            expected = sum(model.live(model.entries.pop(k), now) for k in owned)
            assert await store.purge_owner(owner) == expected, step
        live = [e for e in model.entries.values() if model.live(e, now)]
        assert await store.stats() == StoreStats(len(live), sum(len(e.value) for e in live)), step
        assert store.used_bytes <= store.max_bytes
