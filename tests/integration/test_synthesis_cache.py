"""The synthesis caches through a real server: phrase hits and misses, tiers, policies, purge,
templates spliced onto cached prefixes, the Redis backend, and cancellation."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import RunningServer, ServerThread, serve_in_thread
from tests.helpers import jfk_pcm, normalize
from tests.integration.test_cancellation import eventually
from voxwire import (
    AsyncClient,
    AudioEncoding,
    CachePolicy,
    CacheStatus,
    Client,
    InvalidArgumentError,
    RecognitionConfig,
    ServerError,
    SynthesisCacheStatus,
    UnavailableError,
)
from voxwire_server.config import ServerConfig

MISS, HIT, STITCHED, NONE = (
    SynthesisCacheStatus.MISS,
    SynthesisCacheStatus.HIT,
    SynthesisCacheStatus.STITCHED,
    SynthesisCacheStatus.NONE,
)
TEMPLATE = "Coming up next is {song} by {artist}."


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=60) as c:
        yield c


def statuses(client: Client, text: str, **kwargs: object) -> list[SynthesisCacheStatus]:
    return [c.cache_status for c in client.synthesize_stream(text, **kwargs)]  # type: ignore[arg-type]


def test_a_phrase_is_synthesized_once_per_user_then_replayed(client: Client) -> None:
    text = "Okay, the kitchen lights are on. Anything else?"
    first = client.synthesize(text, user_id="alice", tenant_id="home")
    again = client.synthesize(text, user_id="alice", tenant_id="home")
    assert (first.cache_status, again.cache_status) == (MISS, HIT)
    assert again.audio == first.audio
    # The streamed replay keeps the sentence chunks it was made of.
    assert statuses(client, text, user_id="alice", tenant_id="home") == [HIT, HIT]
    # Personal entries belong to one user of one tenant.
    assert client.synthesize(text, user_id="bob", tenant_id="home").cache_status is MISS
    assert client.synthesize(text, user_id="alice", tenant_id="office").cache_status is MISS
    # Another format is another entry.
    assert (
        client.synthesize(text, user_id="alice", tenant_id="home", sample_rate_hz=16000).cache_status is MISS
    )


def test_bypass_and_do_not_store(client: Client) -> None:
    text = "Your tea is ready."
    assert (
        client.synthesize(text, user_id="carol", cache_policy=CachePolicy.DO_NOT_STORE).cache_status is MISS
    )
    assert client.synthesize(text, user_id="carol", cache_policy=CachePolicy.BYPASS).cache_status is NONE
    assert client.synthesize(text, user_id="carol").cache_status is MISS  # nothing was stored before
    assert client.synthesize(text, user_id="carol", cache_policy=CachePolicy.DO_NOT_STORE).cache_status is HIT
    assert client.synthesize(text, user_id="carol", cache_policy=CachePolicy.BYPASS).cache_status is NONE


def test_purge_user_removes_that_users_entries_only(client: Client) -> None:
    text = "Reminder: water the plants."
    for user in ("dave", "erin"):
        client.synthesize(text, user_id=user, tenant_id="t1")
        # A template no other test warms up: its prefix lands in this user's tier.
        client.synthesize(template="On the radio now, {song}.", entities={"song": "Yesterday"}, user_id=user,
                          tenant_id="t1")  # fmt: skip
    removed = client.purge_user("t1", "dave")
    assert removed >= 2  # the phrase, the template prefix (and the template reply)
    assert client.purge_user("t1", "dave") == 0
    assert client.synthesize(text, user_id="dave", tenant_id="t1").cache_status is MISS
    assert client.synthesize(text, user_id="erin", tenant_id="t1").cache_status is HIT
    with pytest.raises(InvalidArgumentError, match="user_id is empty"):
        client.purge_user("t1", "")


def test_a_stitched_reply_is_kept_for_its_user_and_purged_with_them(client: Client) -> None:
    # The README's quick start: warm a template up, say it for a user twice, purge the user.
    template = "Now playing {song} by {artist}, from the warm-up."
    entities = {"song": "Hotel California", "artist": "the Eagles"}
    assert client.warmup(templates=[template]) == (0, 1)
    first = list(client.synthesize_stream(template=template, entities=entities, user_id="me"))
    assert {c.cache_status for c in first} == {STITCHED}
    again = list(client.synthesize_stream(template=template, entities=entities, user_id="me"))
    assert {c.cache_status for c in again} == {HIT}
    assert b"".join(c.audio for c in again) == b"".join(c.audio for c in first)
    # Streamed and unary replies of one request are one entry.
    assert client.synthesize(template=template, entities=entities, user_id="me").cache_status is HIT
    # Another user of the same template gets it stitched, not this user's reply.
    other = client.synthesize_stream(template=template, entities=entities, user_id="someone-else")
    assert {c.cache_status for c in other} == {STITCHED}
    assert client.purge_user("", "me") == 1
    assert {c.cache_status for c in client.synthesize_stream(template=template, entities=entities,
                                                              user_id="me")} == {STITCHED}  # fmt: skip


def test_warmup_fills_the_global_tier_for_everyone(client: Client) -> None:
    phrases = ["Sure thing.", "Sorry, I didn't catch that."]
    assert client.warmup(phrases, ["Your timer for {duration} is set."]) == (2, 1)
    for user in ("frank", "grace"):
        assert client.synthesize(phrases[1], user_id=user).cache_status is HIT
    # Global entries are not user data: a purge leaves them.
    client.purge_user("", "frank")
    assert client.synthesize(phrases[0], user_id="frank").cache_status is HIT
    timer = {"template": "Your timer for {duration} is set.", "entities": {"duration": "ten minutes"}}
    chunks = list(client.synthesize_stream(**timer, user_id="grace"))  # type: ignore[arg-type]
    assert chunks[0].cache_status is STITCHED
    with pytest.raises(InvalidArgumentError, match="needs phrases or templates"):
        client.warmup()
    with pytest.raises(InvalidArgumentError, match="never closed"):
        client.warmup(templates=["Playing {song"])
    tiers = {t.tier: t for t in client.stats().tiers}
    assert tiers["tts.phrase.global"].entries >= 2
    assert tiers["tts.phrase.global"].hits >= 3
    assert tiers["tts.prefix.global"].entries >= 1


def test_a_template_prefix_is_streamed_at_once_and_the_entities_spliced_on(client: Client) -> None:
    template = "Tomorrow in {city} it will be {condition}."  # no other test warms it up
    oslo, lima = {"city": "Oslo", "condition": "snowy"}, {"city": "Lima", "condition": "cloudy"}
    first = list(client.synthesize_stream(template=template, entities=oslo, user_id="heidi"))
    assert {c.cache_status for c in first} == {MISS}
    second = list(client.synthesize_stream(template=template, entities=lima, user_id="heidi"))
    assert [c.cache_status for c in second] == [STITCHED, STITCHED]
    # The first chunk is the cached prefix, "Tomorrow in", alone: well under a second of audio.
    assert 300 < second[0].audio_duration_ms < 1200
    assert second[1].audio_offset_ms == second[0].audio_duration_ms
    assert second[-1].last and not second[0].last
    unary = client.synthesize(
        template=template, entities={"city": "Rome", "condition": "hot"}, user_id="heidi"
    )
    assert unary.cache_status is STITCHED
    # An identical request is a plain phrase hit.
    again = client.synthesize(
        template=template, entities={"city": "Oslo", "condition": "snowy"}, user_id="heidi"
    )
    assert again.cache_status is HIT


def test_template_with_its_slot_first_has_nothing_to_splice(client: Client) -> None:
    template = "{song} is playing now."
    for song in ("Yesterday", "Imagine"):
        result = client.synthesize(template=template, entities={"song": song}, user_id="ivan")
        assert result.cache_status is MISS


def test_a_template_sentence_after_a_complete_one(client: Client) -> None:
    template = "Here is the news. Today's top story is about {topic}."
    client.warmup(templates=[template])
    chunks = list(
        client.synthesize_stream(template=template, entities={"topic": "the election"}, user_id="judy")
    )
    assert chunks[0].cache_status is STITCHED
    # The first chunk holds the whole first sentence and the cached words of the second.
    assert chunks[0].audio_duration_ms > 1500


async def test_client_cancel_stops_synthesis(server: RunningServer) -> None:
    telemetry = server.app.runtime.telemetry
    sentences = [f"This is sentence number {n} of a long answer." for n in range(1, 21)]
    before = telemetry.registry.get_sample_value("voxwire_tts_units_total") or 0.0
    async with AsyncClient(server.target) as client:
        stream = client.synthesize_stream(" ".join(sentences), cache_policy=CachePolicy.BYPASS)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                assert chunk.sequence == 0
                break
    await eventually(lambda: telemetry.registry.get_sample_value("voxwire_tts_active_streams") == 0)
    rendered = (telemetry.registry.get_sample_value("voxwire_tts_units_total") or 0.0) - before
    assert 1 <= rendered < len(sentences) / 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_server(redis_url: str) -> Iterator[ServerThread]:
    handle = serve_in_thread(
        ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=1.0, cache=redis_url).validate()
    )
    yield handle
    handle.stop()


def test_the_redis_backend_serves_the_same_caches(redis_server: ServerThread) -> None:
    with Client(redis_server.running.target, timeout_s=60) as client:
        text = "Redis keeps this phrase."
        assert client.synthesize(text, user_id="kim", encoding=AudioEncoding.LINEAR16).cache_status is MISS
        hit = client.synthesize(text, user_id="kim", encoding=AudioEncoding.LINEAR16)
        assert hit.cache_status is HIT
        client.synthesize(
            template=TEMPLATE, entities={"song": "Help", "artist": "the Beatles"}, user_id="kim"
        )
        stitched = client.synthesize(template=TEMPLATE, entities={"song": "Jolene", "artist": "Dolly Parton"},
                                     user_id="kim")  # fmt: skip
        assert stitched.cache_status is STITCHED
        assert client.purge_user("", "kim") >= 3
        assert client.synthesize(text, user_id="kim", encoding=AudioEncoding.LINEAR16).cache_status is MISS


def test_a_cache_that_is_down_costs_a_miss_not_an_error() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    handle = serve_in_thread(ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=1.0, cache=url).validate())
    try:
        with Client(handle.running.target, timeout_s=60) as client:
            for _ in range(2):
                assert client.synthesize("Still talking.", user_id="lee").cache_status is MISS
            # A purge that could not happen is not reported as done, and the client is not told
            # where the store is: the log is.
            with pytest.raises(UnavailableError) as info:
                client.purge_user("", "lee")
            assert "127.0.0.1" not in info.value.details and url.rsplit(":", 1)[1] not in info.value.details
            assert "request id" in info.value.details
            tiers = client.stats().tiers
            assert all(t.entries == -1 for t in tiers)
            # GetStats answers through the status table too: a failure there is a generic INTERNAL.
            cache = handle.running.app.runtime.synthesis_cache
            assert cache is not None

            async def failing() -> list[object]:
                raise RuntimeError(f"stats exploded at {url}")

            cache.stats = failing  # type: ignore[method-assign]
            with pytest.raises(ServerError) as failed:
                client.stats()
            assert failed.value.code == "INTERNAL"
            assert "exploded" not in failed.value.details and "request id" in failed.value.details
            # Recognition goes on uncached (the store is down): transcripts, no cache tier, no error.
            pcm = {"encoding": AudioEncoding.LINEAR16, "sample_rate_hz": 16000, "tenant_id": "acme"}
            heard = client.recognize(jfk_pcm(), RecognitionConfig(**pcm))  # type: ignore[arg-type]
            assert heard.results and "country" in heard.text
            assert {r.cache_status for r in heard.results} == {CacheStatus.NONE}
            # One tenant's view: its recognition rows (the lookups that could not reach the store).
            assert {t.tenant_id for t in client.stats("acme").tiers} <= {"acme"}
    finally:
        handle.stop()


def test_compressed_phrases_replay_as_pcm_of_the_same_length_that_transcribes_the_same() -> None:
    handle = serve_in_thread(
        ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=1.0, tts_cache_opus_kbps=32).validate()
    )
    try:
        text = "Your table for four is booked at seven thirty tonight."
        pcm = {"encoding": AudioEncoding.LINEAR16, "sample_rate_hz": 16000, "user_id": "ana"}
        with Client(handle.running.target, timeout_s=60) as client:
            made = client.synthesize(text, **pcm)  # type: ignore[arg-type]
            assert made.cache_status is MISS
            hit = client.synthesize(text, **pcm)  # type: ignore[arg-type]
            assert hit.cache_status is HIT
            assert len(hit.audio) == len(made.audio) and hit.audio != made.audio  # lossy, same length
            streamed = list(client.synthesize_stream(text, **pcm))  # type: ignore[arg-type]
            assert {c.cache_status for c in streamed} == {HIT}
            assert b"".join(c.audio for c in streamed) == hit.audio
            asr = RecognitionConfig(
                encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, cache_policy=CachePolicy.BYPASS
            )
            # The same words: how the decoder capitalizes a word may tip either way on lossy audio
            # (seen: "Your Table for four" from the compressed reply in one installation, with the
            # same code that had given "Your table for four" in another).
            heard = client.recognize(hit.audio, asr).text
            assert normalize(heard) == normalize(client.recognize(made.audio, asr).text), heard
            # WAV replies are kept compressed too; their header is made per request.
            wav = client.synthesize(text, encoding=AudioEncoding.WAV, user_id="ana")
            again = client.synthesize(text, encoding=AudioEncoding.WAV, user_id="ana")
            assert again.cache_status is HIT and again.audio[:44] == wav.audio[:44]
            # Both entries together hold less than a third of the PCM they replay (32 kbit/s Opus).
            (personal,) = [t for t in client.stats().tiers if t.tier == "tts.phrase.personal"]
            assert personal.entries == 2
            assert personal.size_bytes < (len(made.audio) + len(wav.audio) - 44) / 3
    finally:
        handle.stop()
