"""Privacy at rest, checked in a real redis-server: after a tenant's user filled the caches, nothing in
Redis (key names, hash fields and values, owner sets) holds the ids, the text, its phonemes or any run
of the audio, and the entries still hit.

Audio runs are checked as every 512-byte block at a 512-byte offset: any 1 KiB run of the audio
contains one of them, so finding none rules out every 1 KiB run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from tests.conftest import ServerThread, serve_in_thread
from voxwire import AudioEncoding, Client, RecognitionConfig, SynthesisCacheStatus
from voxwire_server.app import App
from voxwire_server.caches.synthesis import CachedAudio, SynthesisCache, phrase_key, prefix_key
from voxwire_server.config import ServerConfig
from voxwire_server.domain import Encoding, RequestContext
from voxwire_server.storage import RedisStore

TENANT = "tenant-privacy-7f3a"
USER = "user-privacy-91c2"
BLOCK_BYTES = 512


def db_url(redis_url: str, db: int) -> str:
    """The session's redis-server, another database: a SCAN there sees only this test's keys."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


def keys_in(url: str) -> list[bytes]:
    with redis.Redis.from_url(url) as admin:
        return list(admin.scan_iter(count=500))


def everything_in(url: str) -> list[bytes]:
    """Every key name in the database, and every field, value and member it holds."""
    blobs: list[bytes] = []
    with redis.Redis.from_url(url) as admin:
        for key in admin.scan_iter(count=500):
            blobs.append(key)
            kind = admin.type(key)
            if kind == b"hash":
                for field, value in admin.hgetall(key).items():
                    blobs += [field, value]
            elif kind == b"set":
                blobs += list(admin.smembers(key))
            elif kind == b"string":
                value = admin.get(key)
                assert value is not None
                blobs.append(value)
            else:
                pytest.fail(f"unexpected {kind!r} key in the cache database")
    return blobs


def unkeyed_hashes(*parts: str) -> list[str]:
    """Plain SHA-256 digests of the ids, as an unkeyed index key would hold them."""
    forms = [json.dumps(list(parts)), json.dumps(["owner", *parts]), ":".join(parts), "".join(parts), *parts]
    return [hashlib.sha256(form.encode()).hexdigest() for form in forms]


def blocks(audio: bytes) -> list[bytes]:
    return [audio[i : i + BLOCK_BYTES] for i in range(0, len(audio) - BLOCK_BYTES + 1, BLOCK_BYTES)]


def assert_nothing_in_the_clear(blobs: list[bytes], texts: list[str], audio: list[bytes]) -> None:
    needles = [text.encode() for text in texts] + [h.encode() for h in unkeyed_hashes(TENANT, USER)]
    runs = [run for clip in audio for run in blocks(clip)]
    assert runs, "no audio to look for"
    for blob in blobs:
        for needle in needles:
            assert needle not in blob, f"{needle[:40]!r} is readable in Redis"
        for run in runs:
            assert run not in blob, "a run of the audio is readable in Redis"


def flush(url: str) -> None:
    with redis.Redis.from_url(url) as admin:
        admin.flushdb()


# -- SynthesisCache on a RedisStore ----------------------------------------------------------------

TEXT = "Your test results from Doctor Hargreaves are ready."
TEMPLATE = "Your prescription from Doctor Hargreaves for {drug} is ready."
PHONEME_WORDS = ["jʊɹ", "pɹəskɹˈɪpʃən", "fɹʌm", "dˈɑktɚ", "hˈɑɹɡɹivz"]


@pytest.mark.parametrize("keys", ["configured", "none configured"])
async def test_a_filled_cache_holds_nothing_readable_in_redis(redis_url: str, keys: str) -> None:
    url = db_url(redis_url, 11)
    flush(url)
    given = (
        {"key_secret": secrets.token_bytes(32), "value_key": secrets.token_bytes(32)}
        if keys == "configured"
        else {}
    )
    rng = np.random.default_rng(7)
    pcm = [rng.integers(-20000, 20000, 6000, dtype=np.int16).tobytes() for _ in range(2)]
    lead = rng.uniform(-1, 1, 3000).astype(np.float32)
    prefix_audio = rng.uniform(-1, 1, 4000).astype(np.float32)
    phrase = phrase_key("text", TEXT, voice="heart", speaking_rate=1.0, encoding=Encoding.LINEAR16,
                        sample_rate_hz=24000, model="hibari-test")  # fmt: skip
    template = prefix_key(TEMPLATE, voice="heart", speaking_rate=1.0, model="hibari-test")
    prefix = {
        "lead": lead,
        "prefix": {"audio": prefix_audio, "words": PHONEME_WORDS, "carried": ["dˈɑktɚ"], "source": TEMPLATE},
    }
    user = RequestContext(tenant_id=TENANT, user_id=USER)
    store = RedisStore(url, timeout_s=5.0)
    try:
        cache = SynthesisCache(store, personal_ttl_s=600.0, **given)  # type: ignore[arg-type]
        assert await cache.put_phrase(phrase, user, CachedAudio(tuple(pcm), (250, 250), 24000))
        assert await cache.put_prefix(template, user, prefix)
        blobs = everything_in(url)
        assert sum(blob.startswith(b"voxwire:v:tts.") for blob in keys_in(url)) == 2
        assert sum(blob.startswith(b"voxwire:o:") for blob in keys_in(url)) == 1  # the owner index
        assert_nothing_in_the_clear(
            blobs,
            [TENANT, USER, TEXT, TEMPLATE, "Hargreaves", "prescription", phrase, template, *PHONEME_WORDS],
            pcm + [lead.tobytes(), prefix_audio.tobytes()],
        )
        # Still hits, for another process that shares the store and its configuration.
        again = SynthesisCache(RedisStore(url, timeout_s=5.0), personal_ttl_s=600.0, **given)  # type: ignore[arg-type]
        try:
            hit = await again.get_phrase(phrase, user)
            assert hit is not None and hit.chunks == tuple(pcm)
            found = await again.get_prefix(template, user)
            assert found is not None and found["prefix"]["words"] == PHONEME_WORDS
            np.testing.assert_array_equal(found["lead"], lead)
            assert await again.get_phrase(phrase, RequestContext(tenant_id=TENANT)) is None  # no user id
            assert await again.purge_user(TENANT, USER) == 2
        finally:
            await again.store.aclose()
    finally:
        await store.aclose()


# -- the real server, through the client library ---------------------------------------------------

SPOKEN = "Your appointment with Doctor Hargreaves moved to Thursday morning."
SPOKEN_TEMPLATE = "Reminder from Doctor Hargreaves about {topic}, see you soon."


@pytest.fixture(scope="module")
def private_server(redis_url: str) -> Iterator[tuple[ServerThread, str]]:
    url = db_url(redis_url, 12)
    flush(url)
    config = ServerConfig(
        listen="127.0.0.1:0",
        shutdown_grace_s=1.0,
        cache=url,
        cache_key_secret=secrets.token_urlsafe(24),
        cache_encryption_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    ).validate()
    handle = serve_in_thread(config)
    yield handle, url
    handle.stop()


def phonemes_of(handle: ServerThread, text: str) -> str:
    """The pronunciation the server's own engine makes (what a template prefix keeps)."""
    synthesizer = handle.running.app.runtime.synthesizer
    voice = synthesizer.resolve_voice("")
    future = asyncio.run_coroutine_threadsafe(synthesizer.phonemes(voice, text), handle.running.loop)
    return future.result(timeout=60)


def test_the_servers_redis_holds_no_ids_text_phonemes_or_audio(
    private_server: tuple[ServerThread, str],
) -> None:
    handle, url = private_server
    who = {"tenant_id": TENANT, "user_id": USER}
    pcm = {"encoding": AudioEncoding.LINEAR16, "sample_rate_hz": 24000}
    with Client(handle.running.target, timeout_s=120) as client:
        spoken = client.synthesize(SPOKEN, **who, **pcm)  # type: ignore[arg-type]
        assert spoken.cache_status is SynthesisCacheStatus.MISS
        first = client.synthesize(template=SPOKEN_TEMPLATE, entities={"topic": "your knee"}, **who, **pcm)  # type: ignore[arg-type]
        blobs = everything_in(url)
        assert sum(blob.startswith(b"voxwire:v:tts.phrase:u:") for blob in keys_in(url)) == 2
        assert sum(blob.startswith(b"voxwire:v:tts.prefix:u:") for blob in keys_in(url)) == 1
        said = phonemes_of(handle, SPOKEN)
        prefix_words = phonemes_of(handle, "Reminder from Doctor Hargreaves about").split()
        # Phoneme words of 6 bytes or more: shorter ones could turn up in random bytes by chance.
        words = [w for w in [*said.split(), *prefix_words] if len(w.encode()) >= 6]
        assert len(words) >= 4
        assert_nothing_in_the_clear(
            blobs,
            [TENANT, USER, SPOKEN, SPOKEN_TEMPLATE, "Hargreaves", "appointment", "Reminder", said, *words],
            [spoken.audio, first.audio],
        )
        # And the entries still serve: the reply replays, the template prefix is stitched onto.
        again = client.synthesize(SPOKEN, **who, **pcm)  # type: ignore[arg-type]
        assert again.cache_status is SynthesisCacheStatus.HIT and again.audio == spoken.audio
        other = client.synthesize(template=SPOKEN_TEMPLATE, entities={"topic": "the results"}, **who, **pcm)  # type: ignore[arg-type]
        assert other.cache_status is SynthesisCacheStatus.STITCHED
        # Without a user id, nothing of this user's is found, and nothing is stored.
        assert client.synthesize(SPOKEN, tenant_id=TENANT, **pcm).cache_status is SynthesisCacheStatus.MISS  # type: ignore[arg-type]
        # Recognition entries hold no transcript in the clear either.
        heard = client.recognize(
            spoken.audio,
            RecognitionConfig(
                encoding=AudioEncoding.LINEAR16, sample_rate_hz=24000, tenant_id=TENANT, user_id=USER
            ),
        )
        transcript = " ".join(r.transcript for r in heard.results)
        assert "appointment" in transcript.lower()
        assert sum(key.startswith(b"voxwire:v:asr.exact:") for key in keys_in(url)) == len(heard.results)
        long_words = [w for w in transcript.split() if len(w) >= 6]
        assert_nothing_in_the_clear(everything_in(url), [transcript, *long_words], [spoken.audio])
        # Two replies, the prefix, the stitched reply and the recognition entries.
        assert client.purge_user(TENANT, USER) == 4 + len(heard.results)
        assert [key for key in keys_in(url) if key.startswith(b"voxwire:v:")] == []


# -- start-up: a shared store without keys is loud -------------------------------------------------


@pytest.mark.parametrize(
    ("given", "warned"),
    [
        ({}, True),
        ({"cache_key_secret": "a cache key secret for the tests"}, False),
        ({"cache_encryption_key": base64.b64encode(bytes(32)).decode(), "cache_key_secret": "x" * 16}, False),
    ],
    ids=["no keys", "key secret only", "both"],
)
async def test_a_shared_store_without_an_encryption_key_or_secret_warns_at_start_up(
    redis_url: str, caplog: pytest.LogCaptureFixture, given: dict[str, str], warned: bool
) -> None:
    app = App(ServerConfig(cache=db_url(redis_url, 13), **given).validate())  # type: ignore[arg-type]
    cache = app.runtime.synthesis_cache
    assert cache is not None
    try:
        with caplog.at_level("INFO", logger="voxwire_server.app"):
            await app._load_cache_key_secret()
    finally:
        await cache.store.aclose()
    loud = [r for r in caplog.records if "NO CACHE ENCRYPTION KEY" in r.getMessage()]
    assert [r.levelname for r in loud] == (["WARNING"] if warned else [])
