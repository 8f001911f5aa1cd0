"""One contract for every Store backend (memory, and a real redis-server), then Redis specifics."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from tests.redis_server import redis_server
from voxwire_server.errors import ConfigError, Unavailable
from voxwire_server.storage import MemoryStore, RedisStore, Store, StoreStats, StoreUnavailable, open_store

POLL_LIMIT_S = 10.0  # bounds every wait for an expiry; the waits themselves poll the key


def unique_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore(16 << 20)
    else:
        # A generous timeout: these tests check behaviour, and the machine may be busy.
        backend = RedisStore(request.getfixturevalue("redis_url"), timeout_s=5.0, key_prefix=unique_prefix())
    yield backend
    await backend.aclose()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client for looking behind the store and changing server settings."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def wait_until_expired(store: Store, key: str) -> None:
    deadline = asyncio.get_running_loop().time() + POLL_LIMIT_S
    while await store.get(key) is not None:
        assert asyncio.get_running_loop().time() < deadline, f"{key} did not expire"
        await asyncio.sleep(0.01)


# --- the contract --------------------------------------------------------------------------------


async def test_get_set_overwrite_delete(store: Store) -> None:
    assert await store.get("a") is None
    await store.set("a", b"one")
    assert await store.get("a") == b"one"
    await store.set("a", b"two")
    assert await store.get("a") == b"two"
    assert await store.delete("a") is True
    assert await store.get("a") is None
    assert await store.delete("a") is False


async def test_get_many_answers_each_key_in_order(store: Store) -> None:
    await store.set("m:a", b"1")
    await store.set("m:c", b"3", ttl_s=60)
    assert await store.get_many(["m:c", "m:b", "m:a", "m:c"]) == [b"3", None, b"1", b"3"]
    assert await store.get_many([]) == []


async def test_set_many_sets_each_value_with_one_ttl_and_no_owner(store: Store) -> None:
    await store.set("n:owned", b"old", owner="kim")
    await store.set_many([("n:owned", b"1"), ("n:new", b"2")], ttl_s=60)
    assert await store.get_many(["n:owned", "n:new"]) == [b"1", b"2"]
    assert await store.purge_owner("kim") == 0  # set again without an owner: no longer kim's
    await store.set_many([("n:short", b"3")], ttl_s=0.2)
    await wait_until_expired(store, "n:short")
    await store.set_many([])
    with pytest.raises(ValueError):
        await store.set_many([("n:x", b"4")], ttl_s=0)


async def test_add_stores_only_when_absent(store: Store) -> None:
    assert await store.add("secret", b"first")
    assert not await store.add("secret", b"second")
    assert await store.get("secret") == b"first"
    results = await asyncio.gather(*(store.add("raced", str(i).encode()) for i in range(10)))
    assert sum(results) == 1
    assert await store.get("raced") == str(results.index(True)).encode()
    await store.set("expiring", b"x", ttl_s=0.05)
    await wait_until_expired(store, "expiring")
    assert await store.add("expiring", b"y")  # an expired value is absent
    assert await store.get("expiring") == b"y"


async def test_values_are_bytes_exactly(store: Store) -> None:
    values = {"empty": b"", "binary": bytes(range(256)) * 3, "large": b"\x00\xff" * (512 * 1024)}
    for key, value in values.items():
        await store.set(key, value)
    for key, value in values.items():
        assert await store.get(key) == value


async def test_keys_are_independent_strings(store: Store) -> None:
    await store.set("tts:*", b"star")
    await store.set("tts:[a]", b"brackets")
    await store.set("tts:é", b"accent")
    assert await store.get("tts:*") == b"star"
    assert await store.get("tts:[a]") == b"brackets"
    assert await store.get("tts:é") == b"accent"
    assert await store.get("tts:a") is None


async def test_ttl_expires(store: Store) -> None:
    await store.set("short", b"v", ttl_s=0.05)
    await store.set("long", b"v", ttl_s=3600)
    await wait_until_expired(store, "short")
    assert await store.get("long") == b"v"
    assert await store.delete("short") is False


async def test_an_overwrite_replaces_the_ttl(store: Store) -> None:
    await store.set("kept", b"v", ttl_s=0.05)
    await store.set("marker", b"v", ttl_s=0.05)  # set later with the same ttl: expires later
    await store.set("kept", b"v2")
    await wait_until_expired(store, "marker")
    assert await store.get("kept") == b"v2"


@pytest.mark.parametrize("ttl_s", [0, -1.0, float("nan")])
async def test_bad_ttls_are_refused(store: Store, ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await store.set("a", b"v", ttl_s=ttl_s)


async def test_purge_owner(store: Store) -> None:
    await store.set("u1:a", b"1", owner="owner-1")
    await store.set("u1:b", b"22", owner="owner-1", ttl_s=3600)
    await store.set("u2:a", b"3", owner="owner-2")
    await store.set("shared", b"4")
    assert await store.purge_owner("owner-1") == 2
    assert await store.get("u1:a") is None and await store.get("u1:b") is None
    assert await store.get("u2:a") == b"3" and await store.get("shared") == b"4"
    assert await store.purge_owner("owner-1") == 0
    assert await store.purge_owner("") == 0
    assert await store.get("shared") == b"4"


async def test_the_last_set_decides_the_owner(store: Store) -> None:
    await store.set("a", b"1", owner="owner-1")
    await store.set("a", b"2", owner="owner-2")
    await store.set("b", b"3", owner="owner-1")
    await store.set("b", b"4")
    await store.set("c", b"5", owner="owner-1")
    assert await store.delete("c") is True
    assert await store.purge_owner("owner-1") == 0
    assert await store.get("a") == b"2" and await store.get("b") == b"4"
    assert await store.purge_owner("owner-2") == 1
    assert await store.get("a") is None


async def test_purge_counts_only_live_entries(store: Store) -> None:
    await store.set("gone", b"1", owner="owner-1", ttl_s=0.05)
    await store.set("here", b"2", owner="owner-1")
    await wait_until_expired(store, "gone")
    assert await store.purge_owner("owner-1") == 1
    assert await store.get("here") is None


async def test_stats_by_prefix(store: Store) -> None:
    await store.set("tts:a", b"12345")
    await store.set("tts:b", b"", owner="owner-1")
    await store.set("asr:a", b"123", ttl_s=3600)
    await store.set("asr*", b"1")  # a glob character in a key is just a character
    assert await store.stats() == StoreStats(entries=4, bytes=9)
    assert await store.stats("tts:") == StoreStats(entries=2, bytes=5)
    assert await store.stats("asr:") == StoreStats(entries=1, bytes=3)
    assert await store.stats("asr*") == StoreStats(entries=1, bytes=1)
    assert await store.stats("none:") == StoreStats(entries=0, bytes=0)
    await store.delete("tts:a")
    assert await store.stats("tts:") == StoreStats(entries=1, bytes=0)


async def test_stats_skip_expired_entries(store: Store) -> None:
    await store.set("a", b"123", ttl_s=0.05)
    await store.set("b", b"45")
    await wait_until_expired(store, "a")
    assert await store.stats() == StoreStats(entries=1, bytes=2)


async def test_concurrent_calls(store: Store) -> None:
    await asyncio.gather(*(store.set(f"k{i}", str(i).encode(), owner=f"o{i % 3}") for i in range(60)))
    values = await asyncio.gather(*(store.get(f"k{i}") for i in range(60)))
    assert values == [str(i).encode() for i in range(60)]
    assert sum(await asyncio.gather(*(store.purge_owner(f"o{j}") for j in range(3)))) == 60


async def test_a_closed_store_is_unavailable(store: Store) -> None:
    await store.set("a", b"1")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.get("a")
    with pytest.raises(StoreUnavailable):
        await store.set("a", b"1")


# --- open_store --------------------------------------------------------------------------------


async def test_open_store_picks_the_backend(redis_url: str) -> None:
    memory = open_store("memory", max_bytes=1024, timeout_s=0.05)
    assert isinstance(memory, MemoryStore) and memory.max_bytes == 1024
    remote = open_store(redis_url, max_bytes=1024, timeout_s=1.0)
    assert isinstance(remote, RedisStore) and remote.name == "redis"
    await remote.set("open-store-check", b"1", ttl_s=60)
    assert await remote.get("open-store-check") == b"1"
    assert await remote.delete("open-store-check") is True
    await remote.aclose()
    for url in ("rediss://cache.example:6380/0", "unix:///run/redis/redis.sock"):
        other = open_store(url, max_bytes=0, timeout_s=0.05)
        assert isinstance(other, RedisStore)
        await other.aclose()


@pytest.mark.parametrize("url", ["", "Memory", "http://x", "postgres://u:hunter2@db/1", "redis:/x", "6379"])
def test_open_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="'memory', 'redis://") as caught:
        open_store(url, max_bytes=1024, timeout_s=0.05)
    assert "hunter2" not in str(caught.value)


# --- Redis specifics ---------------------------------------------------------------------------


def refused_url(sock: socket.socket) -> str:
    """A loopback port that is bound but not listening: connections are refused, and nobody can
    take the port while `sock` stays open."""
    return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@asynccontextmanager
async def frozen_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP server that accepts and reads but never answers: a frozen Redis."""
    received = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            received.set()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0", received
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def assert_every_call_unavailable(store: RedisStore) -> None:
    for call in (
        store.get("a"),
        store.set("a", b"1", ttl_s=1, owner="o"),
        store.delete("a"),
        store.purge_owner("o"),
        store.stats(),
    ):
        with pytest.raises(StoreUnavailable) as caught:
            await call
        assert isinstance(caught.value, Unavailable)  # the transport maps it to UNAVAILABLE
        assert caught.value.__cause__ is not None  # the Redis error stays for the server log


async def test_redis_down_raises_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        store = RedisStore(refused_url(sock))
        await assert_every_call_unavailable(store)
        await store.aclose()


async def test_redis_socket_missing_raises_store_unavailable(tmp_path: Path) -> None:
    store = RedisStore(f"unix://{tmp_path}/no-such-redis.sock")
    await assert_every_call_unavailable(store)
    await store.aclose()


async def test_redis_frozen_raises_store_unavailable() -> None:
    async with frozen_server() as (url, _):
        store = RedisStore(url, timeout_s=0.05)
        await assert_every_call_unavailable(store)
        await store.aclose()


async def until_available(store: RedisStore) -> None:
    """Retry a call until it gets through (bounded): the store's 50 ms timeout may catch a busy machine."""
    deadline = asyncio.get_running_loop().time() + POLL_LIMIT_S
    while True:
        try:
            await store.get("probe")
            return
        except StoreUnavailable:
            assert asyncio.get_running_loop().time() < deadline, "the store never got through"
            await asyncio.sleep(0.01)


async def test_redis_frozen_after_first_use_raises_and_recovers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as (url, process):
        store = RedisStore(url)  # the default 50 ms timeout
        await until_available(store)  # connected, maxmemory-policy checked
        os.kill(process.pid, signal.SIGSTOP)  # Redis freezes: connections open, no answers
        try:
            await assert_every_call_unavailable(store)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await until_available(store)
        await store.aclose()


async def test_redis_errors_become_store_unavailable(redis_url: str, admin: redis.asyncio.Redis) -> None:
    user = f"voxwire-{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+config|get", "+client"]
    )
    try:
        parts = urlsplit(redis_url)
        store = RedisStore(f"redis://{user}:pw@{parts.netloc}{parts.path}", timeout_s=5.0)
        await assert_every_call_unavailable(store)  # NOPERM for everything but CONFIG GET
        await store.aclose()
    finally:
        await admin.acl_deluser(user)


async def test_a_cancelled_call_is_cancelled_not_unavailable() -> None:
    async with frozen_server() as (url, received):
        store = RedisStore(url, timeout_s=60.0)
        task = asyncio.ensure_future(store.get("a"))
        async with asyncio.timeout(POLL_LIMIT_S):
            await received.wait()  # the command is on the wire, the call is waiting for a reply
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.aclose()


async def test_the_error_message_carries_no_secret(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    store = RedisStore(f"redis://intruder:hunter2@{parts.netloc}{parts.path}", timeout_s=5.0)
    with pytest.raises(StoreUnavailable) as caught:
        await store.get("a")
    assert "hunter2" not in str(caught.value) and "intruder" not in str(caught.value)
    assert parts.netloc in str(caught.value)
    await store.aclose()


def test_a_malformed_redis_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisStore("redis://:hunter2@127.0.0.1:notaport/0")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="timeout"):
        RedisStore("redis://127.0.0.1:6379/0", timeout_s=0)


async def test_the_owner_index_expires_with_its_longest_member(
    redis_url: str, admin: redis.asyncio.Redis
) -> None:
    prefix = unique_prefix()
    store = RedisStore(redis_url, timeout_s=5.0, key_prefix=prefix)
    index = f"{prefix}o:owner-1"
    await store.set("a", b"1", owner="owner-1", ttl_s=100)
    assert 0 < await admin.pttl(index) <= 100_000
    await store.set("b", b"1", owner="owner-1", ttl_s=1000)
    assert 100_000 < await admin.pttl(index) <= 1_000_000
    await store.set("c", b"1", owner="owner-1", ttl_s=10)  # a shorter member never shortens it
    assert 100_000 < await admin.pttl(index) <= 1_000_000
    await store.set("d", b"1", owner="owner-1")  # a member without expiry: the index keeps forever
    assert await admin.pttl(index) == -1
    await store.set("e", b"1", owner="owner-1", ttl_s=10)
    assert await admin.pttl(index) == -1
    assert await store.purge_owner("owner-1") == 5
    assert await admin.exists(index) == 0
    await store.aclose()


async def test_no_warning_under_allkeys_lfu(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(redis_url, timeout_s=5.0, key_prefix=unique_prefix())
    with caplog.at_level(logging.WARNING, logger="voxwire_server.storage.redis"):
        await store.get("a")
    assert not caplog.records
    await store.aclose()


async def test_one_warning_when_redis_does_not_evict_by_lfu(
    redis_url: str, admin: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.config_set("maxmemory-policy", "noeviction")
    try:
        store = RedisStore(redis_url, timeout_s=5.0, key_prefix=unique_prefix())
        with caplog.at_level(logging.WARNING, logger="voxwire_server.storage.redis"):
            await store.get("a")
            await store.set("a", b"1", ttl_s=60)
            await store.get("a")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "noeviction" in warnings[0].getMessage()
        await store.aclose()
    finally:
        await admin.config_set("maxmemory-policy", "allkeys-lfu")


async def test_a_forbidden_config_get_is_tolerated(
    redis_url: str, admin: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"voxwire-{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"], commands=["-config"]
    )
    try:
        parts = urlsplit(redis_url)
        store = RedisStore(f"redis://{user}:pw@{parts.netloc}{parts.path}", timeout_s=5.0)
        with caplog.at_level(logging.INFO, logger="voxwire_server.storage.redis"):
            await store.set("a", b"1", ttl_s=60)
            assert await store.get("a") == b"1"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("maxmemory-policy" in r.getMessage() for r in caplog.records)
        assert await store.delete("a") is True
        await store.aclose()
    finally:
        await admin.acl_deluser(user)


async def test_allkeys_lfu_evicts_cold_entries_and_keeps_a_hot_one(
    redis_url: str, admin: redis.asyncio.Redis
) -> None:
    """Deterministic enough: with lfu-log-factor 0 every read counts, the hot key's counter is far
    above every cold key's, and Redis evicts the coldest of its sampled candidates."""
    saved = await admin.config_get("maxmemory", "lfu-log-factor", "lfu-decay-time")
    store = RedisStore(redis_url, timeout_s=5.0, key_prefix=unique_prefix())
    try:
        await admin.config_set("lfu-log-factor", 0)
        await admin.config_set("lfu-decay-time", 0)
        await store.set("hot", b"h" * 1000)
        for _ in range(300):
            assert await store.get("hot") == b"h" * 1000
        used_bytes = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory", used_bytes + (2 << 20))
        cold_value = b"c" * (32 << 10)
        for i in range(256):  # 8 MiB of cold entries into 2 MiB of room: writes succeed, others go
            await store.set(f"cold:{i}", cold_value)
        stats = await store.stats("cold:")
        assert 0 < stats.entries < 256
        assert await store.get("hot") == b"h" * 1000
    finally:
        for name, value in saved.items():
            assert name is not None and value is not None
            await admin.config_set(name, value)
        await store.aclose()
