from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from voxwire_server.caches.envelope import OVERHEAD_BYTES, Sealer, SealError, derive_key, key_id
from voxwire_server.caches.synthesis import (
    SECRET_KEY,
    SECRET_REFRESH_S,
    SECRET_RETRY_S,
    CachedAudio,
    SynthesisCache,
    TierStats,
    normalized,
    phrase_key,
    prefix_key,
)
from voxwire_server.domain import CachePolicy, Encoding, RequestContext
from voxwire_server.storage import MemoryStore, StoreStats, StoreUnavailable, pack

TTL_S = 60.0
SECRET = b"a test secret of 32 bytes, fixed"
ALICE = RequestContext(tenant_id="acme", user_id="alice")
BOB = RequestContext(tenant_id="acme", user_id="bob")
ALICE_ELSEWHERE = RequestContext(tenant_id="globex", user_id="alice")
AUDIO = CachedAudio(chunks=(b"\x01\x02", b"\x03\x04\x05\x06"), durations_ms=(10, 20), sample_rate_hz=24000)
OTHER_AUDIO = CachedAudio(chunks=(b"\x07\x08",), durations_ms=(5,), sample_rate_hz=16000)
KEY = phrase_key(
    "text",
    "Lights on.",
    voice="heart",
    speaking_rate=1.0,
    encoding=Encoding.WAV,
    sample_rate_hz=24000,
    model="m1",
)
PREFIX_KEY = prefix_key("Next is {song}.", voice="heart", speaking_rate=1.0, model="m1")


@dataclass
class FakeClock:
    now_s: float = 1000.0

    def __call__(self) -> float:
        return self.now_s


class RecordingStore(MemoryStore):
    """A memory store that remembers the keys it was given, so a test can corrupt one."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(1 << 20, clock=clock)
        self.keys: list[str] = []

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None, owner: str = "") -> None:
        self.keys.append(key)
        await super().set(key, value, ttl_s=ttl_s, owner=owner)


class DownStore:
    """A backend that cannot be reached."""

    name = "down"

    async def get(self, key: str) -> bytes | None:
        raise StoreUnavailable("connection refused")

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None, owner: str = "") -> None:
        raise StoreUnavailable("connection refused")

    async def delete(self, key: str) -> bool:
        raise StoreUnavailable("connection refused")

    async def add(self, key: str, value: bytes) -> bool:
        raise StoreUnavailable("connection refused")

    async def purge_owner(self, owner: str) -> int:
        raise StoreUnavailable("connection refused")

    async def stats(self, prefix: str = "") -> StoreStats:
        raise StoreUnavailable("connection refused")

    async def aclose(self) -> None:
        pass


@dataclass
class Setup:
    cache: SynthesisCache
    store: RecordingStore
    clock: FakeClock
    lookups: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def setup() -> Setup:
    clock = FakeClock()
    store = RecordingStore(clock)
    lookups: list[tuple[str, str]] = []
    cache = SynthesisCache(
        store,
        personal_ttl_s=TTL_S,
        on_lookup=lambda tier, outcome: lookups.append((tier, outcome)),
        key_secret=SECRET,
    )
    return Setup(cache, store, clock, lookups)


def rows(stats: list[TierStats]) -> dict[str, tuple[int, int, int]]:
    """tier → (entries, hits, misses)."""
    return {row.tier: (row.entries, row.hits, row.misses) for row in stats}


# -- keys ------------------------------------------------------------------------------------------


def test_phrase_key_covers_everything_that_changes_the_bytes() -> None:
    base: dict[str, Any] = {
        "voice": "heart",
        "speaking_rate": 1.0,
        "encoding": Encoding.WAV,
        "sample_rate_hz": 24000,
        "model": "m1",
    }
    assert phrase_key("text", "Lights on.", **base) == KEY
    assert phrase_key("text", "  Lights \n on. ", **base) == KEY  # whitespace runs collapse
    assert phrase_key("text", "Lights on.", **{**base, "speaking_rate": 1.0001}) == KEY  # 3 decimals
    variants = [
        phrase_key("ssml", "Lights on.", **base),
        phrase_key("text", "lights on.", **base),
        phrase_key("text", "Lights on.", **{**base, "voice": "bella"}),
        phrase_key("text", "Lights on.", **{**base, "speaking_rate": 1.01}),
        phrase_key("text", "Lights on.", **{**base, "encoding": Encoding.LINEAR16}),
        phrase_key("text", "Lights on.", **{**base, "sample_rate_hz": 16000}),
        phrase_key("text", "Lights on.", **{**base, "model": "m2"}),
    ]
    assert len({KEY, *variants}) == len(variants) + 1


def test_prefix_key_covers_template_voice_rate_and_model() -> None:
    assert prefix_key(" Next  is {song}. ", voice="heart", speaking_rate=1.0, model="m1") == PREFIX_KEY
    variants = [
        prefix_key("Next is {track}.", voice="heart", speaking_rate=1.0, model="m1"),
        prefix_key("Next is {song}.", voice="bella", speaking_rate=1.0, model="m1"),
        prefix_key("Next is {song}.", voice="heart", speaking_rate=1.5, model="m1"),
        prefix_key("Next is {song}.", voice="heart", speaking_rate=1.0, model="m2"),
    ]
    assert len({PREFIX_KEY, *variants}) == len(variants) + 1


async def test_owner_and_normalized(setup: Setup) -> None:
    owner = setup.cache.owner
    assert await owner("acme", "alice") == await owner("acme", "alice")
    owners = {await owner("acme", "alice"), await owner("acme", "bob"), await owner("globex", "alice")}
    assert len(owners) == 3
    assert await owner("ab", "c") != await owner("a", "bc")
    assert normalized("  Okay,\t lights\n on. ") == "Okay, lights on."


async def test_store_keys_are_hmacs_under_the_secret(setup: Setup) -> None:
    import hashlib
    import hmac
    import json

    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    await setup.cache.put_phrase(KEY, None, AUDIO)
    personal, shared = setup.store.keys
    # Without the secret nobody can make the key of a guessed (tenant, user, phrase): the plain
    # SHA-256 a reader could compute is not there...
    plain = hashlib.sha256(json.dumps(["acme", "alice", KEY]).encode()).hexdigest()
    assert plain not in personal and KEY not in shared
    # ...while with it the key follows.
    keyed = hmac.new(SECRET, json.dumps(["personal", "acme", "alice", KEY]).encode(), hashlib.sha256)
    assert personal == f"tts.phrase:u:{keyed.hexdigest()}"
    other = SynthesisCache(setup.store, personal_ttl_s=TTL_S, key_secret=b"another secret, not the same")
    assert await other.get_phrase(KEY, ALICE) is None
    assert await other.get_phrase(KEY, BOB) is None  # not even the global entry
    assert await other.purge_user("acme", "alice") == 0
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SynthesisCache(setup.store, personal_ttl_s=TTL_S, key_secret=b"short")


async def test_without_a_given_secret_one_is_generated_and_kept_in_the_store() -> None:
    clock = FakeClock()
    store = RecordingStore(clock)
    first = SynthesisCache(store, personal_ttl_s=TTL_S, clock=clock)
    await first.put_phrase(KEY, ALICE, AUDIO)
    secret = await store.get(SECRET_KEY)
    assert secret is not None and len(secret) == 32
    assert await first.key_secret() == secret
    # Another process sharing the store finds it, and with it the first one's entries.
    second = SynthesisCache(store, personal_ttl_s=TTL_S, clock=clock)
    assert await second.get_phrase(KEY, ALICE) == AUDIO
    assert await second.purge_user("acme", "alice") == 1
    # A cache on another store makes its own.
    elsewhere = SynthesisCache(MemoryStore(1 << 16), personal_ttl_s=TTL_S)
    assert await elsewhere.key_secret() != secret


async def test_an_evicted_secret_is_put_back_by_the_process_that_holds_it() -> None:
    clock = FakeClock()
    store = RecordingStore(clock)
    cache = SynthesisCache(store, personal_ttl_s=TTL_S, clock=clock)
    await cache.put_phrase(KEY, None, AUDIO)  # global: no TTL to outlive
    secret = await cache.key_secret()
    await store.delete(SECRET_KEY)  # as LFU eviction would
    clock.now_s += SECRET_REFRESH_S + 1
    assert await cache.get_phrase(KEY, ALICE) == AUDIO
    assert await store.get(SECRET_KEY) == secret
    # A newcomer after the refresh agrees with it.
    assert await SynthesisCache(store, personal_ttl_s=TTL_S, clock=clock).get_phrase(KEY, ALICE) == AUDIO


class SwitchableStore(MemoryStore):
    """A memory store that can be taken down; counts the calls that reach it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(1 << 20, clock=clock)
        self.down = False
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.down:
            await asyncio.sleep(0.01)  # as a timeout would, so concurrent callers overlap
            raise StoreUnavailable("down")
        return await super().get(key)

    async def add(self, key: str, value: bytes) -> bool:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down")
        return await super().add(key, value)


async def test_a_store_down_at_first_use_costs_one_secret_read_not_one_per_request() -> None:
    clock = FakeClock()
    store = SwitchableStore(clock)
    store.down = True
    cache = SynthesisCache(store, personal_ttl_s=TTL_S, clock=clock)
    results = await asyncio.gather(*(cache.get_phrase(KEY, ALICE) for _ in range(10)))
    assert results == [None] * 10  # misses, not errors
    assert store.calls == 1  # one read tried; the others did not queue behind its timeout
    clock.now_s += SECRET_RETRY_S + 0.1
    store.down = False
    await cache.put_phrase(KEY, ALICE, AUDIO)
    assert await cache.get_phrase(KEY, ALICE) == AUDIO


async def test_a_store_down_at_refresh_keeps_the_secret_in_hand() -> None:
    clock = FakeClock()
    store = SwitchableStore(clock)
    cache = SynthesisCache(store, personal_ttl_s=TTL_S, clock=clock)
    await cache.put_phrase(KEY, None, AUDIO)
    secret = await cache.key_secret()
    clock.now_s += SECRET_REFRESH_S + 1
    store.down = True
    assert await cache.key_secret() == secret  # the refresh failed: the secret held stays in use
    calls = store.calls
    assert await cache.key_secret() == secret
    assert store.calls == calls  # and the next second does not try again


# -- tiers -----------------------------------------------------------------------------------------


async def test_personal_miss_put_hit(setup: Setup) -> None:
    assert await setup.cache.get_phrase(KEY, ALICE) is None
    assert await setup.cache.put_phrase(KEY, ALICE, AUDIO) is True
    assert await setup.cache.get_phrase(KEY, ALICE) == AUDIO


async def test_global_miss_put_hit_for_every_tenant(setup: Setup) -> None:
    assert await setup.cache.get_phrase(KEY, ALICE) is None
    assert await setup.cache.put_phrase(KEY, None, AUDIO) is True
    for context in (ALICE, BOB, ALICE_ELSEWHERE, RequestContext()):
        assert await setup.cache.get_phrase(KEY, context) == AUDIO


async def test_prefix_miss_put_hit_per_tier(setup: Setup) -> None:
    value = {"lead": np.arange(5, dtype=np.float32), "prefix": None}
    assert await setup.cache.get_prefix(PREFIX_KEY, ALICE) is None
    assert await setup.cache.put_prefix(PREFIX_KEY, ALICE, value) is True
    found = await setup.cache.get_prefix(PREFIX_KEY, ALICE)
    assert found is not None and found["prefix"] is None
    np.testing.assert_array_equal(found["lead"], value["lead"])
    assert await setup.cache.get_prefix(PREFIX_KEY, BOB) is None
    assert await setup.cache.put_prefix(PREFIX_KEY, None, {"lead": np.ones(2, np.float32), "prefix": None})
    found = await setup.cache.get_prefix(PREFIX_KEY, BOB)
    assert found is not None
    np.testing.assert_array_equal(found["lead"], np.ones(2, np.float32))


async def test_phrases_and_prefixes_do_not_share_keys(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    assert await setup.cache.get_prefix(KEY, ALICE) is None


async def test_personal_is_looked_up_before_global(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, OTHER_AUDIO)
    await setup.cache.put_phrase(KEY, None, AUDIO)
    assert await setup.cache.get_phrase(KEY, ALICE) == OTHER_AUDIO
    assert setup.lookups == [("tts.phrase.personal", "hit")]
    assert await setup.cache.get_phrase(KEY, BOB) == AUDIO


async def test_personal_entries_are_invisible_to_other_users_and_tenants(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    assert await setup.cache.get_phrase(KEY, BOB) is None
    assert await setup.cache.get_phrase(KEY, ALICE_ELSEWHERE) is None
    assert await setup.cache.get_phrase(KEY, ALICE) == AUDIO
    # Keyed hashes: nothing in the store is named after the phrase key.
    assert all(KEY not in key for key in setup.store.keys)


# -- cache policies --------------------------------------------------------------------------------


async def test_bypass_neither_reads_nor_stores_nor_counts(setup: Setup) -> None:
    bypass = RequestContext("acme", "alice", CachePolicy.BYPASS)
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    await setup.cache.put_phrase(KEY, None, AUDIO)
    assert await setup.cache.get_phrase(KEY, bypass) is None
    assert await setup.cache.get_prefix(PREFIX_KEY, bypass) is None
    assert setup.lookups == []
    assert (
        await setup.cache.put_phrase(KEY, RequestContext("acme", "carol", CachePolicy.BYPASS), AUDIO) is False
    )
    assert await setup.cache.get_phrase(KEY, RequestContext("acme", "carol")) == AUDIO  # the global one
    assert rows(await setup.cache.stats())["tts.phrase.personal"] == (1, 0, 1)


async def test_do_not_store_reads_but_does_not_store(setup: Setup) -> None:
    carol = RequestContext("acme", "carol", CachePolicy.DO_NOT_STORE)
    assert await setup.cache.put_phrase(KEY, carol, AUDIO) is False
    assert await setup.cache.put_prefix(PREFIX_KEY, carol, {"lead": None}) is False
    assert setup.store.keys == []
    assert await setup.cache.get_phrase(KEY, carol) is None
    await setup.cache.put_phrase(KEY, RequestContext("acme", "carol"), AUDIO)
    assert await setup.cache.get_phrase(KEY, carol) == AUDIO


# -- expiry and purging ----------------------------------------------------------------------------


async def test_global_entries_never_expire(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, None, AUDIO)
    setup.clock.now_s += 10 * 365 * 24 * 3600
    assert await setup.cache.get_phrase(KEY, ALICE) == AUDIO


async def test_personal_entries_expire_after_the_ttl(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    await setup.cache.put_prefix(PREFIX_KEY, ALICE, {"lead": None, "prefix": None})
    setup.clock.now_s += TTL_S - 1
    assert await setup.cache.get_phrase(KEY, ALICE) == AUDIO
    setup.clock.now_s += 2
    assert await setup.cache.get_phrase(KEY, ALICE) is None
    assert await setup.cache.get_prefix(PREFIX_KEY, ALICE) is None


async def test_purge_user_removes_only_that_users_entries(setup: Setup) -> None:
    other_key = KEY[::-1]
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    await setup.cache.put_prefix(PREFIX_KEY, ALICE, {"lead": None, "prefix": None})
    await setup.cache.put_phrase(KEY, BOB, AUDIO)
    await setup.cache.put_phrase(KEY, ALICE_ELSEWHERE, AUDIO)
    await setup.cache.put_phrase(other_key, None, OTHER_AUDIO)
    assert await setup.cache.purge_user("acme", "alice") == 2
    assert await setup.cache.get_phrase(KEY, ALICE) is None
    assert await setup.cache.get_prefix(PREFIX_KEY, ALICE) is None
    assert await setup.cache.get_phrase(KEY, BOB) == AUDIO
    assert await setup.cache.get_phrase(KEY, ALICE_ELSEWHERE) == AUDIO
    assert await setup.cache.get_phrase(other_key, ALICE) == OTHER_AUDIO
    assert await setup.cache.purge_user("acme", "alice") == 0


# -- a store that is down, bytes that are not ours -------------------------------------------------


async def test_a_store_that_is_down_is_a_miss_and_a_put_is_a_no_op() -> None:
    lookups: list[tuple[str, str]] = []
    cache = SynthesisCache(DownStore(), personal_ttl_s=TTL_S, on_lookup=lambda t, o: lookups.append((t, o)))
    assert await cache.get_phrase(KEY, ALICE) is None
    assert await cache.get_prefix(PREFIX_KEY, ALICE) is None
    assert await cache.put_phrase(KEY, ALICE, AUDIO) is False
    assert await cache.put_phrase(KEY, None, AUDIO) is False
    assert await cache.put_prefix(PREFIX_KEY, ALICE, {"lead": None}) is False
    assert lookups == []
    assert [(r.tier, r.entries, r.bytes, r.hits, r.misses) for r in await cache.stats()] == [
        ("tts.phrase.global", -1, -1, 0, 0),
        ("tts.phrase.personal", -1, -1, 0, 0),
        ("tts.prefix.global", -1, -1, 0, 0),
        ("tts.prefix.personal", -1, -1, 0, 0),
    ]


async def test_purging_a_user_on_a_store_that_is_down_is_an_error() -> None:
    # Unlike a lookup, a purge must not pretend to have succeeded.
    with pytest.raises(StoreUnavailable):
        await SynthesisCache(DownStore(), personal_ttl_s=TTL_S).purge_user("acme", "alice")


async def test_unreadable_bytes_are_a_miss(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    (key,) = setup.store.keys
    await setup.store.set(key, b"\x93\x01\x02\x03")  # msgpack, but not from this codec
    assert await setup.cache.get_phrase(KEY, ALICE) is None


async def test_an_unreadable_personal_entry_falls_through_to_global(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, OTHER_AUDIO)
    (personal_key,) = setup.store.keys
    await setup.store.set(personal_key, b"garbage")
    await setup.cache.put_phrase(KEY, None, AUDIO)
    assert await setup.cache.get_phrase(KEY, ALICE) == AUDIO


async def test_an_unreadable_entry_is_removed_from_the_store(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, None, AUDIO)
    (key,) = setup.store.keys
    await setup.store.set(key, b"garbage")
    assert await setup.cache.get_phrase(KEY, ALICE) is None
    assert (await setup.store.stats("tts.phrase:")).entries == 0


# -- counters ----------------------------------------------------------------------------------------


async def test_on_lookup_reports_each_tier_tried(setup: Setup) -> None:
    await setup.cache.get_phrase(KEY, ALICE)
    assert setup.lookups == [("tts.phrase.personal", "miss"), ("tts.phrase.global", "miss")]
    setup.lookups.clear()
    await setup.cache.put_prefix(PREFIX_KEY, ALICE, {"lead": None, "prefix": None})
    await setup.cache.get_prefix(PREFIX_KEY, ALICE)
    assert setup.lookups == [("tts.prefix.personal", "hit")]


async def test_stats_rows_count_entries_bytes_hits_and_misses(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, None, AUDIO)
    await setup.cache.put_phrase(KEY, ALICE, OTHER_AUDIO)
    await setup.cache.put_phrase(KEY, BOB, OTHER_AUDIO)
    await setup.cache.put_prefix(PREFIX_KEY, ALICE, {"lead": None, "prefix": None})
    assert await setup.cache.get_phrase(KEY, ALICE) == OTHER_AUDIO  # personal hit
    assert await setup.cache.get_phrase(KEY[::-1], ALICE) is None  # two misses
    assert await setup.cache.get_prefix(PREFIX_KEY, ALICE) is not None  # personal hit
    assert await setup.cache.get_prefix(PREFIX_KEY, BOB) is None  # two misses

    def size(audio: CachedAudio) -> int:
        value = {
            "chunks": list(audio.chunks),
            "durations_ms": list(audio.durations_ms),
            "sample_rate_hz": audio.sample_rate_hz,
        }
        return len(pack(value)) + OVERHEAD_BYTES  # stored sealed

    assert await setup.cache.stats() == [
        TierStats("tts.phrase.global", entries=1, hits=0, misses=1, bytes=size(AUDIO)),
        TierStats("tts.phrase.personal", entries=2, hits=1, misses=1, bytes=2 * size(OTHER_AUDIO)),
        TierStats("tts.prefix.global", entries=0, hits=0, misses=1, bytes=0),
        TierStats(
            "tts.prefix.personal",
            entries=1,
            hits=1,
            misses=1,
            bytes=len(pack({"lead": None, "prefix": None})) + OVERHEAD_BYTES,
        ),
    ]


async def test_a_cache_without_a_lookup_callback_still_counts() -> None:
    cache = SynthesisCache(MemoryStore(1 << 16), personal_ttl_s=TTL_S, key_secret=SECRET)
    await cache.put_phrase(KEY, ALICE, AUDIO)
    assert await cache.get_phrase(KEY, ALICE) == AUDIO
    assert rows(await cache.stats())["tts.phrase.personal"] == (1, 1, 0)
    assert cache.store.name == "memory"


# -- requests without a user id --------------------------------------------------------------------


@pytest.mark.parametrize("anonymous", [RequestContext(), RequestContext(tenant_id="acme")])
async def test_a_request_without_a_user_id_neither_reads_nor_writes_a_personal_tier(
    setup: Setup, anonymous: RequestContext
) -> None:
    assert await setup.cache.put_phrase(KEY, anonymous, AUDIO) is False
    assert await setup.cache.put_prefix(PREFIX_KEY, anonymous, {"lead": None, "prefix": None}) is False
    assert setup.store.keys == []
    assert await setup.cache.get_phrase(KEY, anonymous) is None
    assert await setup.cache.get_prefix(PREFIX_KEY, anonymous) is None
    # Only the global tier was looked up: anonymous requests share no tier of their own.
    assert setup.lookups == [("tts.phrase.global", "miss"), ("tts.prefix.global", "miss")]
    await setup.cache.put_phrase(KEY, None, AUDIO)
    assert await setup.cache.get_phrase(KEY, anonymous) == AUDIO


# -- values at rest --------------------------------------------------------------------------------

VALUE_KEY = bytes(range(32))
NEW_VALUE_KEY = bytes(range(100, 132))


async def raw_values(store: RecordingStore) -> dict[str, bytes]:
    found = {key: await store.get(key) for key in dict.fromkeys(store.keys)}
    return {key: value for key, value in found.items() if value is not None}


async def test_values_are_sealed_under_the_given_key_and_hold_nothing_in_the_clear() -> None:
    store = RecordingStore(FakeClock())
    cache = SynthesisCache(store, personal_ttl_s=TTL_S, key_secret=SECRET, value_key=VALUE_KEY)
    lead = np.linspace(-1, 1, 4096, dtype=np.float32)
    words = ["kˈʌmɪŋ", "ˈʌp", "nˈɛkst"]
    pcm = bytes(range(256)) * 16
    await cache.put_phrase(KEY, ALICE, CachedAudio((pcm,), (85,), 24000))
    await cache.put_prefix(PREFIX_KEY, ALICE, {"lead": lead, "prefix": {"words": words}})
    values = await raw_values(store)
    assert len(values) == 2
    for store_key, value in values.items():
        plain, current = Sealer(VALUE_KEY).open(value, store_key)
        assert current and value[2:10] == key_id(VALUE_KEY)
        assert pcm[:64] not in value and lead.tobytes()[:64] not in value
        assert all(word.encode() not in value for word in words)
        assert b"alice" not in value and b"acme" not in value and b"words" not in value
    found = await cache.get_prefix(PREFIX_KEY, ALICE)
    assert found is not None and found["prefix"] == {"words": words}
    np.testing.assert_array_equal(found["lead"], lead)


async def test_without_a_value_key_values_are_sealed_under_one_derived_from_the_key_secret() -> None:
    store = RecordingStore(FakeClock())
    await SynthesisCache(store, personal_ttl_s=TTL_S, key_secret=SECRET).put_phrase(KEY, ALICE, AUDIO)
    ((store_key, value),) = (await raw_values(store)).items()
    Sealer(derive_key(SECRET)).open(value, store_key)  # raises when it is not
    with pytest.raises(SealError):
        Sealer(SECRET).open(value, store_key)  # derived, not the HMAC secret itself
    # A generated secret (kept in the store) derives the value key just the same.
    generated = RecordingStore(FakeClock())
    await SynthesisCache(generated, personal_ttl_s=TTL_S).put_phrase(KEY, ALICE, AUDIO)
    secret = await generated.get(SECRET_KEY)
    assert secret is not None
    ((store_key, value),) = [item for item in (await raw_values(generated)).items() if item[0] != SECRET_KEY]
    assert value[2:10] == key_id(derive_key(secret))


async def test_a_value_moved_to_another_users_key_is_a_miss(setup: Setup) -> None:
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    await setup.cache.put_phrase(KEY, BOB, OTHER_AUDIO)
    alice_key, bob_key = setup.store.keys
    alices = await setup.store.get(alice_key)
    assert alices is not None
    await setup.store.set(bob_key, alices)  # as a reader with write access to the store might
    assert await setup.cache.get_phrase(KEY, BOB) is None  # not alice's audio
    assert await setup.cache.get_phrase(KEY, ALICE) == AUDIO


async def test_a_tampered_value_is_a_logged_miss_and_removed(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    await setup.cache.put_phrase(KEY, ALICE, AUDIO)
    (key,) = setup.store.keys
    sealed = await setup.store.get(key)
    assert sealed is not None
    await setup.store.set(key, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with caplog.at_level("WARNING", logger="voxwire_server.caches.synthesis"):
        assert await setup.cache.get_phrase(KEY, ALICE) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "does not open" in caplog.text and "NotAuthentic" in caplog.text
    assert sealed.hex()[:16] not in caplog.text and "alice" not in caplog.text
    assert await setup.store.get(key) is None


async def test_rotation_old_key_reads_new_key_writes_global_entries_resealed_on_a_hit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = RecordingStore(clock)
    old = SynthesisCache(store, personal_ttl_s=TTL_S, key_secret=SECRET, value_key=VALUE_KEY, clock=clock)
    await old.put_phrase(KEY, ALICE, AUDIO)
    await old.put_phrase(KEY, None, OTHER_AUDIO)
    personal_key, global_key = store.keys

    async def sealed_by(store_key: str) -> bytes:
        value = await store.get(store_key)
        assert value is not None
        return value[2:10]

    # Step 2: the new key is current, the old one retired.
    rotated = SynthesisCache(store, personal_ttl_s=TTL_S, key_secret=SECRET, value_key=NEW_VALUE_KEY,
                             retired_value_keys=[VALUE_KEY], clock=clock)  # fmt: skip
    assert await rotated.get_phrase(KEY, ALICE) == AUDIO
    assert await rotated.get_phrase(KEY, BOB) == OTHER_AUDIO
    assert await sealed_by(global_key) == key_id(NEW_VALUE_KEY)  # re-sealed on the hit
    assert await sealed_by(personal_key) == key_id(VALUE_KEY)  # left to expire with its TTL
    await rotated.put_phrase(KEY, BOB, AUDIO)
    assert await sealed_by(store.keys[-1]) == key_id(NEW_VALUE_KEY)
    # The old key alone no longer reads what the new one sealed.
    assert await old.get_phrase(KEY, BOB) is None
    # Step 3: the old key dropped. The personal entry under it is a miss, and is kept (a replica
    # still holding the key may read it); the re-sealed global entry still hits.
    new_only = SynthesisCache(store, personal_ttl_s=TTL_S, key_secret=SECRET, value_key=NEW_VALUE_KEY,
                              clock=clock)  # fmt: skip
    with caplog.at_level("WARNING", logger="voxwire_server.caches.synthesis"):
        assert await new_only.get_phrase(KEY, ALICE) == OTHER_AUDIO  # personal miss, then global
    assert "a key this server does not hold" in caplog.text and caplog.records[-1].levelname == "WARNING"
    caplog.clear()
    with caplog.at_level("WARNING", logger="voxwire_server.caches.synthesis"):
        assert await new_only.get_phrase(KEY, ALICE) == OTHER_AUDIO
    assert caplog.records == []  # said once per key id, not on every lookup
    assert await store.get(personal_key) is not None
    clock.now_s += TTL_S + 1
    assert await store.get(personal_key) is None  # expired


def test_value_keys_of_the_wrong_length_are_refused() -> None:
    store = MemoryStore(1 << 16)
    with pytest.raises(ValueError, match="32 bytes"):
        SynthesisCache(store, personal_ttl_s=TTL_S, value_key=b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        SynthesisCache(store, personal_ttl_s=TTL_S, retired_value_keys=[b"short"])
