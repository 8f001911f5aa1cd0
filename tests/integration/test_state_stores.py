"""One contract for both stream-state stores (in process, and a real redis-server), then Redis specifics.

Live state advances only by compare-and-set on its sequence, so two writers can never both advance
one stream; it expires, is purged by owner, and is never evicted to make room."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from voxwire_server.errors import ConfigError
from voxwire_server.storage import StoreUnavailable, open_state_store
from voxwire_server.storage.redis_state import RedisStateStore
from voxwire_server.storage.state import MemoryStateStore, SavedState, StateConflict, StateStore

POLL_LIMIT_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    backend: StateStore
    if request.param == "memory":
        backend = MemoryStateStore(16 << 20)
    else:
        prefix = f"test:{uuid.uuid4().hex[:12]}:"
        backend = RedisStateStore(request.getfixturevalue("redis_url"), timeout_s=5.0, key_prefix=prefix)
    yield backend
    await backend.aclose()


async def test_a_stream_advances_one_sequence_at_a_time(store: StateStore) -> None:
    assert await store.load("s1") is None
    await store.save("s1", b"one", sequence=1, previous=0, ttl_s=60, owner="u1")
    assert await store.load("s1") == SavedState(1, b"one", "u1")
    await store.save("s1", b"two", sequence=2, previous=1, ttl_s=60, owner="u1")
    assert await store.load("s1") == SavedState(2, b"two", "u1")
    # A sequence may skip ahead (a writer that batched chunks), never go back.
    await store.save("s1", b"five", sequence=5, previous=2, ttl_s=60, owner="u1")
    assert (await store.load("s1") or SavedState(0, b"")).sequence == 5


async def test_a_second_writer_of_the_same_sequence_loses(store: StateStore) -> None:
    await store.save("s1", b"base", sequence=3, previous=0, ttl_s=60)
    await store.save("s1", b"replica A", sequence=4, previous=3, ttl_s=60)
    with pytest.raises(StateConflict) as lost:
        await store.save("s1", b"replica B", sequence=4, previous=3, ttl_s=60)
    assert (lost.value.stored, lost.value.expected) == (4, 3)
    with pytest.raises(StateConflict):
        await store.save("s1", b"a fresh stream of the same id", sequence=1, previous=0, ttl_s=60)
    with pytest.raises(StateConflict):
        await store.save("s2", b"no state to follow", sequence=2, previous=1, ttl_s=60)
    assert await store.load("s1") == SavedState(4, b"replica A")
    assert await store.load("s2") is None


async def test_concurrent_writers_never_both_advance(store: StateStore) -> None:
    await store.save("s1", b"base", sequence=1, previous=0, ttl_s=60)

    async def write(name: bytes) -> bool:
        try:
            await store.save("s1", name, sequence=2, previous=1, ttl_s=60)
        except StateConflict:
            return False
        return True

    won = await asyncio.gather(*(write(f"w{i}".encode()) for i in range(8)))
    assert sum(won) == 1
    saved = await store.load("s1")
    assert saved is not None and saved.payload == f"w{won.index(True)}".encode()


async def test_delete_and_purge_by_owner(store: StateStore) -> None:
    for sid, owner in (("a", "alice"), ("b", "alice"), ("c", "bob"), ("d", "")):
        await store.save(sid, sid.encode(), sequence=1, previous=0, ttl_s=60, owner=owner)
    assert await store.delete("d") is True
    assert await store.delete("d") is False
    assert await store.purge_owner("") == 0
    assert await store.purge_owner("alice") == 2
    assert await store.purge_owner("alice") == 0
    assert [await store.load(s) for s in "abd"] == [None, None, None]
    assert await store.load("c") == SavedState(1, b"c", "bob")
    # A purged stream can start again from nothing.
    await store.save("a", b"new", sequence=1, previous=0, ttl_s=60, owner="alice")
    assert await store.load("a") == SavedState(1, b"new", "alice")


async def test_bad_arguments_are_refused_before_any_write(store: StateStore) -> None:
    for sequence, previous, ttl_s in ((1, 1, 60.0), (0, 0, 60.0), (2, -1, 60.0), (2, 1, 0.0), (2, 1, -5.0)):
        with pytest.raises(ValueError):
            await store.save("s", b"x", sequence=sequence, previous=previous, ttl_s=ttl_s)
    assert await store.load("s") is None


async def test_a_closed_store_is_unavailable(store: StateStore) -> None:
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreUnavailable):
        await store.load("s")
    with pytest.raises(StoreUnavailable):
        await store.save("s", b"x", sequence=1, previous=0, ttl_s=60)


# --- memory specifics ----------------------------------------------------------------------------


async def test_memory_state_expires_after_its_last_save_and_frees_its_bytes() -> None:
    clock = Clock()
    store = MemoryStateStore(1 << 20, clock=clock)
    await store.save("s1", b"x" * 100, sequence=1, previous=0, ttl_s=10)
    clock.now += 8
    await store.save("s1", b"y" * 100, sequence=2, previous=1, ttl_s=10)  # renews the expiry
    clock.now += 8
    assert (await store.load("s1") or SavedState(0, b"")).payload == b"y" * 100
    clock.now += 2
    assert await store.load("s1") is None
    assert store.used_bytes == 0
    # An expired stream counts as none stored: it may start again.
    await store.save("s1", b"z", sequence=1, previous=0, ttl_s=10)
    # Expired entries nobody reads are swept by later saves.
    clock.now += 11
    await store.save("s2", b"w", sequence=1, previous=0, ttl_s=10)
    assert store.used_bytes < 200


async def test_memory_store_refuses_a_save_when_full_and_evicts_nothing() -> None:
    store = MemoryStateStore(1000)
    await store.save("s1", b"x" * 500, sequence=1, previous=0, ttl_s=60)
    with pytest.raises(StoreUnavailable, match="full"):
        await store.save("s2", b"x" * 500, sequence=1, previous=0, ttl_s=60)
    with pytest.raises(StoreUnavailable, match="full"):
        await store.save("s1", b"x" * 1000, sequence=2, previous=1, ttl_s=60)
    assert await store.load("s1") == SavedState(1, b"x" * 500)
    assert await store.load("s2") is None


async def test_memory_store_holds_one_deadline_per_stream_however_often_it_saves() -> None:
    clock = Clock()
    store = MemoryStateStore(1 << 20, clock=clock)
    for sequence in range(1, 2001):
        await store.save("s1", b"x", sequence=sequence, previous=sequence - 1, ttl_s=1)
        clock.now += 0.01
    assert len(store._deadlines) == 1


# --- Redis specifics -----------------------------------------------------------------------------


async def test_redis_keys_carry_a_hash_tag_per_stream_and_the_state_its_ttl(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    store = RedisStateStore(redis_url, timeout_s=5.0, key_prefix=prefix)
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        await store.save("stream-7", b"x", sequence=1, previous=0, ttl_s=30, owner="alice")
        keys = sorted(k.decode() for k in await admin.keys(f"{prefix}*"))
        assert keys == [f"{prefix}s:{{stream-7}}", f"{prefix}so:{{alice}}"]
        assert 0 < await admin.pttl(f"{prefix}s:{{stream-7}}") <= 30_000
        assert 0 < await admin.pttl(f"{prefix}so:{{alice}}") <= 30_000
        await store.save("stream-8", b"x", sequence=1, previous=0, ttl_s=300, owner="alice")
        assert await admin.pttl(f"{prefix}so:{{alice}}") > 30_000  # as long as its longest stream
    finally:
        await store.aclose()
        await admin.aclose()


async def test_redis_state_expires(redis_url: str) -> None:
    store = RedisStateStore(redis_url, timeout_s=5.0, key_prefix=f"test:{uuid.uuid4().hex[:12]}:")
    try:
        await store.save("s1", b"x", sequence=1, previous=0, ttl_s=0.05)
        deadline = asyncio.get_running_loop().time() + POLL_LIMIT_S
        while await store.load("s1") is not None:
            assert asyncio.get_running_loop().time() < deadline, "the state did not expire"
            await asyncio.sleep(0.01)
        await store.save("s1", b"again", sequence=1, previous=0, ttl_s=60)
    finally:
        await store.aclose()


async def test_redis_warns_when_live_state_could_be_evicted(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.asyncio.Redis.from_url(redis_url)
    before = await admin.config_get("maxmemory")
    policy = await admin.config_get("maxmemory-policy")
    try:
        await admin.config_set("maxmemory", "512mb")
        await admin.config_set("maxmemory-policy", "allkeys-lfu")
        store = RedisStateStore(redis_url, timeout_s=5.0, key_prefix=f"test:{uuid.uuid4().hex[:12]}:")
        with caplog.at_level(logging.WARNING, logger="voxwire_server.storage.redis_state"):
            await store.load("s")
        await store.aclose()
        assert "may evict live stream state" in caplog.text
        caplog.clear()
        await admin.config_set("maxmemory-policy", "noeviction")
        store = RedisStateStore(redis_url, timeout_s=5.0, key_prefix=f"test:{uuid.uuid4().hex[:12]}:")
        with caplog.at_level(logging.WARNING, logger="voxwire_server.storage.redis_state"):
            await store.load("s")
        await store.aclose()
        assert "evict" not in caplog.text
    finally:
        await admin.config_set("maxmemory", before["maxmemory"])
        await admin.config_set("maxmemory-policy", policy["maxmemory-policy"])
        await admin.aclose()


async def test_redis_down_is_unavailable_quickly() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    store = RedisStateStore("redis://127.0.0.1:1/0", timeout_s=0.05)
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await store.save("s", b"x", sequence=1, previous=0, ttl_s=60)
    with pytest.raises(StoreUnavailable):
        await store.load("s")
    await store.aclose()


async def test_open_state_store_takes_the_same_urls_as_the_cache() -> None:
    assert isinstance(open_state_store("memory", max_bytes=1 << 20, timeout_s=0.05), MemoryStateStore)
    remote = open_state_store("redis://127.0.0.1:1/0", max_bytes=0, timeout_s=0.05)
    assert isinstance(remote, RedisStateStore)
    await remote.aclose()
    with pytest.raises(ConfigError) as bad:
        open_state_store("http://user:hunter2@example.com", max_bytes=0, timeout_s=0.05)
    assert "hunter2" not in str(bad.value)
