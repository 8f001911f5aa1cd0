"""The recognition cache's tiers against both store backends (in process, and a real redis-server):
each tier's hit and miss, tenant isolation, purge, DO_NOT_STORE, TTLs, keys that follow the decode
options, and a store that is down. The audio is the shipped JFK sample; no model runs here (what the
model would answer is given as a WindowResult)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers import jfk_pcm
from voxwire_server.caches.keyring import Keyring
from voxwire_server.caches.recognition import (
    EXACT,
    RecognitionCache,
    RecognitionCacheSettings,
)
from voxwire_server.domain import (
    Alternative,
    CachePolicy,
    CacheStatus,
    DecodeOptions,
    RequestContext,
    Tier,
    Word,
)
from voxwire_server.engines.base import WindowResult
from voxwire_server.errors import InvalidInput
from voxwire_server.storage import MemoryStore, RedisStore, Store

SECRET = b"a test secret of some length"
ALICE = RequestContext(tenant_id="acme", user_id="alice")
BOB = RequestContext(tenant_id="acme", user_id="bob")
OTHER_TENANT = RequestContext(tenant_id="globex", user_id="alice")
FAST = DecodeOptions()
SAID = WindowResult((Alternative("and so my fellow americans", 0.9, (Word("and", 0.1, 0.3, 0.9),)),))


def jfk() -> npt.NDArray[np.int16]:
    return np.frombuffer(jfk_pcm(), "<i2").copy()


def piece(start_s: float, end_s: float) -> npt.NDArray[np.int16]:
    return jfk()[int(start_s * 16000) : int(end_s * 16000)]


def degraded(audio: npt.NDArray[np.int16], seed: int = 1) -> npt.NDArray[np.int16]:
    """The same recording again: 4 dB louder, with noise ~25 dB below it, 30 ms later."""
    rng = np.random.default_rng(seed)
    x = audio.astype(np.float64) * 10 ** (4 / 20)
    x += rng.normal(0, np.sqrt(np.mean(x**2)) * 10 ** (-25 / 20), x.size)
    x = np.concatenate([rng.normal(0, 3, 480), x])
    return np.clip(x, -32768, 32767).astype(np.int16)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore(64 << 20)
    else:
        url = request.getfixturevalue("redis_url")
        backend = RedisStore(url, timeout_s=5.0, key_prefix=f"test:{uuid.uuid4().hex[:12]}:")
    yield backend
    await backend.aclose()


def cache_of(store: Store, **settings: object) -> RecognitionCache:
    merged: dict[str, object] = {"fuzzy": True, "self_echo": True, **settings}
    return RecognitionCache(
        Keyring(store, key_secret=SECRET),
        "model-v1",
        RecognitionCacheSettings(**merged),  # type: ignore[arg-type]
    )


async def decode_and_store(
    cache: RecognitionCache,
    audio: npt.NDArray[np.int16],
    context: RequestContext = ALICE,
    options: DecodeOptions = FAST,
    said: WindowResult = SAID,
) -> None:
    lookup = await cache.lookup(audio, options, context)
    assert lookup.status is CacheStatus.MISS
    assert lookup.probe is not None
    await cache.store(lookup.probe, said, Tier.FAST, decode_s=0.25)


async def test_exact_hit_returns_what_the_model_said_and_a_miss_before(store: Store) -> None:
    cache = cache_of(store)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    hit = await cache.lookup(audio, FAST, ALICE)
    assert hit.status is CacheStatus.EXACT
    assert hit.alternatives == SAID.alternatives
    assert hit.tier is Tier.FAST
    # Digital silence around the same samples (a retry padded differently) is the same audio.
    padded = np.concatenate([np.zeros(800, np.int16), audio, np.zeros(160, np.int16)])
    again = await cache.lookup(padded, FAST, ALICE)
    assert again.status is CacheStatus.EXACT
    # Its words are where they are in this audio: 50 ms later.
    (word,) = again.alternatives[0].words
    assert (word.start_s, word.end_s) == pytest.approx((0.15, 0.35))
    # Another user of the tenant hears the same recording: the tenant's entry answers.
    assert (await cache.lookup(audio, FAST, BOB)).status is CacheStatus.EXACT
    (row,) = [r for r in cache.tenant_stats("acme") if r.tier == EXACT]
    assert (row.requests, row.hits) == (4, 3)
    assert row.model_seconds_saved == pytest.approx(0.75)


async def test_tenants_never_share_an_entry(store: Store) -> None:
    cache = cache_of(store)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    lookup = await cache.lookup(audio, FAST, OTHER_TENANT)
    assert lookup.status is CacheStatus.MISS
    assert lookup.audio_key != (await cache.lookup(audio, FAST, ALICE)).audio_key


@pytest.mark.parametrize(
    "changed",
    [
        {"tier": Tier.ACCURATE},
        {"language": "de"},
        {"hotwords": ("Kennedy",)},
        {"prompt": "An inaugural address."},
        {"max_alternatives": 3},
        {"word_timestamps": True},
    ],
)
async def test_every_option_that_changes_text_changes_the_key(
    store: Store, changed: dict[str, object]
) -> None:
    cache = cache_of(store, fuzzy=False, negative=False)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    other = replace(FAST, **changed)  # type: ignore[arg-type]
    assert (await cache.lookup(audio, other, ALICE)).status is CacheStatus.MISS
    assert (await cache.lookup(audio, FAST, ALICE)).status is CacheStatus.EXACT


async def test_another_model_version_never_finds_the_entries(store: Store) -> None:
    await decode_and_store(cache_of(store), piece(0, 3))
    upgraded = RecognitionCache(
        Keyring(store, key_secret=SECRET), "model-v2", RecognitionCacheSettings(fuzzy=True)
    )
    assert (await upgraded.lookup(piece(0, 3), FAST, ALICE)).status is CacheStatus.MISS
    assert (await upgraded.lookup(degraded(piece(0, 3)), FAST, ALICE)).status is CacheStatus.MISS


async def test_bypass_consults_nothing_and_do_not_store_stores_nothing(store: Store) -> None:
    cache = cache_of(store)
    audio = piece(0, 3)
    bypass = replace(ALICE, cache_policy=CachePolicy.BYPASS)
    assert (await cache.lookup(audio, FAST, bypass)).status is CacheStatus.NONE
    private = replace(ALICE, cache_policy=CachePolicy.DO_NOT_STORE)
    lookup = await cache.lookup(audio, FAST, private)
    assert lookup.status is CacheStatus.MISS and lookup.probe is not None
    await cache.store(lookup.probe, SAID, Tier.FAST, 0.2)
    await cache.store(lookup.probe, WindowResult(()), Tier.FAST, 0.2)
    assert all(found.entries == 0 for _, found in await cache.entries())
    assert (await cache.lookup(audio, FAST, ALICE)).status is CacheStatus.MISS


async def test_fuzzy_answers_a_degraded_copy_with_word_times_moved(store: Store) -> None:
    cache = cache_of(store)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    copy = degraded(audio)
    hit = await cache.lookup(copy, FAST, BOB)
    assert hit.status is CacheStatus.FUZZY
    assert hit.alternatives[0].text == SAID.alternatives[0].text
    # Another part of the speech, and the copy in another tenant, are not the same recording.
    assert (await cache.lookup(piece(4, 7), FAST, ALICE)).status is CacheStatus.MISS
    assert (await cache.lookup(copy, FAST, OTHER_TENANT)).status is CacheStatus.MISS


async def test_fuzzy_is_off_unless_asked_for(store: Store) -> None:
    cache = cache_of(store, fuzzy=False)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    assert (await cache.lookup(degraded(audio), FAST, ALICE)).status is CacheStatus.MISS


async def test_negative_drops_a_recording_that_decoded_to_nothing(store: Store) -> None:
    cache = cache_of(store)
    noise = (np.random.default_rng(7).normal(0, 900, 32000)).astype(np.int16)
    await decode_and_store(cache, noise, said=WindowResult(()))
    again = await cache.lookup(degraded(noise, seed=3), FAST, ALICE)
    assert again.status is CacheStatus.NEGATIVE
    assert again.alternatives == ()
    # Speech never matches the noise entry.
    assert (await cache.lookup(piece(0, 3), FAST, ALICE)).status is CacheStatus.MISS


async def test_self_echo_drops_a_piece_of_a_reply_heard_back(store: Store) -> None:
    cache = cache_of(store)
    reply = piece(0, 8)  # stands in for synthesized speech
    assert await cache.remember_reply(ALICE, "reply-1", reply)
    heard = degraded(piece(2, 5), seed=5)
    assert (await cache.lookup(heard, FAST, ALICE)).status is CacheStatus.SELF_ECHO
    assert (await cache.lookup(heard, FAST, OTHER_TENANT)).status is CacheStatus.MISS
    assert (await cache.lookup(piece(8.5, 11), FAST, ALICE)).status is CacheStatus.MISS
    # The user talking over the reply (barge-in): not the reply alone, so it is decoded.
    talking = piece(8.5, 11.5)[: heard.size].astype(np.float64)
    over = np.clip(heard[: talking.size] + talking, -32768, 32767).astype(np.int16)
    assert (await cache.lookup(over, FAST, ALICE)).status is CacheStatus.MISS
    # A reply played again is listened for again without its audio; an unknown one is not known.
    assert await cache.remember_reply(ALICE, "reply-1", None)
    assert not await cache.remember_reply(ALICE, "reply-2", None)


async def test_a_correction_answers_the_audio_and_its_copies(store: Store) -> None:
    cache = cache_of(store)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    await cache.correct(BOB, "en", "And so, my fellow Americans,", audio=audio)
    hit = await cache.lookup(audio, FAST, ALICE)
    assert hit.status is CacheStatus.CORRECTION
    assert hit.alternatives[0].text == "And so, my fellow Americans,"
    assert (await cache.lookup(degraded(audio), FAST, ALICE)).status is CacheStatus.CORRECTION
    # It has no word timings: a request for them is answered by the model's own entry.
    timed = replace(FAST, word_timestamps=True)
    assert (await cache.lookup(audio, timed, ALICE)).status is CacheStatus.MISS
    assert (await cache.lookup(audio, FAST, OTHER_TENANT)).status is CacheStatus.MISS


async def test_a_correction_by_cache_key_stays_in_its_tenant(store: Store) -> None:
    cache = cache_of(store, fuzzy=False)
    audio = piece(0, 3)
    key = (await cache.lookup(audio, FAST, ALICE)).audio_key
    # Another tenant that learnt the key cannot put words into this tenant's results.
    await cache.correct(OTHER_TENANT, "en", "something else", audio_key=key)
    assert (await cache.lookup(audio, FAST, ALICE)).status is CacheStatus.MISS
    await cache.correct(ALICE, "en", "and so my fellow americans", audio_key=key)
    assert (await cache.lookup(audio, FAST, BOB)).status is CacheStatus.CORRECTION


async def test_bad_corrections_are_invalid_input(store: Store) -> None:
    cache = cache_of(store)
    with pytest.raises(InvalidInput, match="empty"):
        await cache.correct(ALICE, "en", "   ", audio=piece(0, 1))
    with pytest.raises(InvalidInput, match="cache_key"):
        await cache.correct(ALICE, "en", "text", audio_key="not-a-key")
    with pytest.raises(InvalidInput, match="silent"):
        await cache.correct(ALICE, "en", "text", audio=np.zeros(16000, np.int16))
    with pytest.raises(InvalidInput, match="USE"):
        await cache.correct(
            replace(ALICE, cache_policy=CachePolicy.DO_NOT_STORE), "en", "t", audio=piece(0, 1)
        )


async def test_purge_user_leaves_nothing_of_the_user_readable(store: Store) -> None:
    cache = cache_of(store)
    await decode_and_store(cache, piece(0, 3), ALICE)
    await decode_and_store(cache, piece(4, 7), BOB)
    noise = (np.random.default_rng(9).normal(0, 900, 32000)).astype(np.int16)
    await decode_and_store(cache, noise, ALICE, said=WindowResult(()))
    await cache.correct(ALICE, "en", "corrected", audio=piece(8, 10))
    await cache.remember_reply(ALICE, "reply", piece(0, 2))
    removed = await cache.purge_user("acme", "alice")
    assert removed == 5  # exact, fuzzy and negative entries, the correction, the reply
    for audio in (piece(0, 3), degraded(piece(0, 3)), noise, piece(8, 10), piece(0, 2)):
        assert not (await cache.lookup(audio, FAST, ALICE)).answered
    # Bob's entries are his.
    assert (await cache.lookup(piece(4, 7), FAST, BOB)).status is CacheStatus.EXACT
    assert await cache.purge_user("acme", "alice") == 0


async def test_entries_expire_with_their_tier_ttl(store: Store) -> None:
    cache = cache_of(store, exact_ttl_s=0.3, fuzzy_ttl_s=0.3)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    assert (await cache.lookup(audio, FAST, ALICE)).status is CacheStatus.EXACT
    deadline = time.monotonic() + 10
    while (await cache.lookup(audio, FAST, ALICE)).status is not CacheStatus.MISS:
        assert time.monotonic() < deadline, "the exact entry outlived its TTL"
        await asyncio.sleep(0.05)
    assert (await cache.lookup(degraded(audio), FAST, ALICE)).status is CacheStatus.MISS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_store_that_is_down_is_a_miss_never_an_error() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05)
    cache = cache_of(store)
    try:
        lookup = await cache.lookup(piece(0, 3), FAST, ALICE)
        assert lookup.status is CacheStatus.NONE  # decoded uncached
        probe = (await cache_of(MemoryStore(1 << 20)).lookup(piece(0, 3), FAST, ALICE)).probe
        assert probe is not None
        await cache.store(probe, SAID, Tier.FAST, 0.1)  # skipped, logged
        assert await cache.remember_reply(ALICE, "r", piece(0, 2))
    finally:
        await store.aclose()


async def test_a_fuzzy_entry_answering_many_recordings_raises_the_alarm(store: Store) -> None:
    cache = cache_of(store, collision_recordings=3)
    audio = piece(0, 3)
    await decode_and_store(cache, audio)
    for seed in range(3):
        assert (await cache.lookup(degraded(audio, seed=10 + seed), FAST, ALICE)).status is CacheStatus.FUZZY
    (row,) = [r for r in cache.tenant_stats("acme") if r.tier == "asr.fuzzy"]
    assert row.collisions == 1


async def test_an_older_models_entry_answers_when_allowed_and_asks_for_a_refresh(store: Store) -> None:
    await decode_and_store(cache_of(store, fuzzy=False), piece(0, 3))
    keyring = Keyring(store, key_secret=SECRET)
    strict = RecognitionCache(keyring, "model-v2", RecognitionCacheSettings())
    assert (await strict.lookup(piece(0, 3), FAST, ALICE)).status is CacheStatus.MISS
    upgraded = RecognitionCache(keyring, "model-v2", RecognitionCacheSettings(stale_models=("model-v1",)))
    asked: list[tuple[str, int]] = []
    upgraded.on_stale = lambda probe, audio: asked.append((probe.audio_key, audio.size))
    served = await upgraded.lookup(piece(0, 3), FAST, ALICE)
    assert served.status is CacheStatus.EXACT and served.stale
    assert served.alternatives == SAID.alternatives
    assert asked == [(served.audio_key, 3 * 16000)]
    # DO_NOT_STORE may read the old entry, but asks for no refresh (that would store).
    private = replace(ALICE, cache_policy=CachePolicy.DO_NOT_STORE)
    assert (await upgraded.lookup(piece(0, 3), FAST, private)).stale
    assert len(asked) == 1
    # Refreshed: the current model's entry answers from then on.
    assert served.probe is not None
    renewed = WindowResult((Alternative("and so my fellow americans ask", 0.95),))
    await upgraded.store(served.probe, renewed, Tier.FAST, 0.3)
    again = await upgraded.lookup(piece(0, 3), FAST, ALICE)
    assert again.status is CacheStatus.EXACT and not again.stale
    assert again.alternatives == renewed.alternatives


async def test_every_spelling_of_a_language_is_one_language_to_the_keys(store: Store) -> None:
    def model_code(language: str) -> str:  # what the recognizer's check_language does
        return language.split("-")[0].lower()

    cache = RecognitionCache(
        Keyring(store, key_secret=SECRET), "model-v1", RecognitionCacheSettings(), language=model_code
    )
    audio = piece(0, 3)
    await cache.correct(ALICE, "en-US", "and so my fellow americans", audio=audio)
    for spelling in ("en", "EN", "en-GB", ""):
        hit = await cache.lookup(audio, replace(FAST, language=spelling), BOB)
        assert hit.status is CacheStatus.CORRECTION, spelling
    await decode_and_store(cache, piece(4, 7), options=replace(FAST, language="en-GB"))
    assert (await cache.lookup(piece(4, 7), replace(FAST, language="en"), ALICE)).status is CacheStatus.EXACT
