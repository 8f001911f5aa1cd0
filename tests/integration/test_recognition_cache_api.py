"""The recognition cache through a real server (real model) and the real client: exact hits for a
retried clip and a replayed stream, corrections, purge, DO_NOT_STORE, self-echo of the server's own
replies, and GetStats. Each test has a tenant of its own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import RunningServer, serve_in_thread
from tests.helpers import jfk_pcm
from voxwire import AudioEncoding, CachePolicy, CacheStatus, Client, RecognitionConfig
from voxwire.errors import InvalidArgumentError
from voxwire_server.caches.recognition import Probe, RecognitionCache, RecognitionCacheSettings
from voxwire_server.config import ServerConfig
from voxwire_server.domain import Alternative, DecodeOptions, RequestContext, Tier
from voxwire_server.engines.base import WindowRequest, WindowResult

PCM = jfk_pcm()


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    config = ServerConfig(
        listen="127.0.0.1:0",
        shutdown_grace_s=1.0,
        asr_cache_tiers="correction,exact,negative,self_echo,component",
        asr_cache_fuzzy="on",
    ).validate()
    handle = serve_in_thread(config)
    try:
        with Client(handle.running.target, timeout_s=60) as c:
            yield c
    finally:
        handle.stop()


def config(tenant: str, user: str = "u1", policy: CachePolicy = CachePolicy.USE) -> RecognitionConfig:
    return RecognitionConfig(
        encoding=AudioEncoding.LINEAR16,
        sample_rate_hz=16000,
        tenant_id=tenant,
        user_id=user,
        cache_policy=policy,
    )


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_a_retried_clip_is_answered_exactly_and_a_stream_of_it_too(client: Client) -> None:
    t = tenant()
    first = client.recognize(PCM, config(t))
    assert first.results and {r.cache_status for r in first.results} == {CacheStatus.MISS}
    again = client.recognize(PCM, config(t, user="u2"))
    assert [r.cache_status for r in again.results] == [CacheStatus.EXACT] * len(first.results)
    assert [r.transcript for r in again.results] == [r.transcript for r in first.results]
    assert [r.cache_key for r in again.results] == [r.cache_key for r in first.results]
    streamed = [
        u.result for u in client.stream(PCM, config(t), chunk_ms=100) if u.result and u.result.is_final
    ]
    assert [r.transcript for r in streamed] == [r.transcript for r in first.results]
    assert {r.cache_status for r in streamed} == {CacheStatus.EXACT}
    # Another tenant's first time is a miss.
    assert {r.cache_status for r in client.recognize(PCM, config(tenant())).results} == {CacheStatus.MISS}


def test_bypass_and_do_not_store(client: Client) -> None:
    t = tenant()
    bypass = client.recognize(PCM, config(t, policy=CachePolicy.BYPASS))
    assert {r.cache_status for r in bypass.results} == {CacheStatus.NONE}
    assert all(r.cache_key == "" for r in bypass.results)
    client.recognize(PCM, config(t, policy=CachePolicy.DO_NOT_STORE))
    assert {r.cache_status for r in client.recognize(PCM, config(t)).results} == {CacheStatus.MISS}


def test_a_correction_by_cache_key_answers_later_requests(client: Client) -> None:
    t = tenant()
    first = client.recognize(PCM, config(t))
    key = first.results[0].cache_key
    assert len(key) == 64
    assert client.submit_correction(
        None, "And so, my fellow Americans!", cache_key=key, tenant_id=t, user_id="u1"
    )
    again = client.recognize(PCM, config(t))
    assert again.results[0].cache_status is CacheStatus.CORRECTION
    assert again.results[0].transcript == "And so, my fellow Americans!"
    # The correction is the tenant's: another tenant gets the model's text.
    other = client.recognize(PCM, config(tenant()))
    assert other.results[0].transcript == first.results[0].transcript
    with pytest.raises(InvalidArgumentError, match="cache_key"):
        client.submit_correction(None, "text", cache_key="xyz", tenant_id=t)
    with pytest.raises(InvalidArgumentError, match="empty"):
        client.submit_correction(None, " ", cache_key=key, tenant_id=t)


def test_a_correction_by_audio(client: Client) -> None:
    t = tenant()
    first = client.recognize(PCM, config(t))
    utterance = first.results[0]
    audio = PCM[utterance.audio_start_ms * 32 : utterance.audio_end_ms * 32]
    # The clip cut where the server cut it: the same samples as its first utterance.
    assert client.submit_correction(
        audio, "corrected words", encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, tenant_id=t
    )
    again = client.recognize(PCM, config(t))
    assert again.results[0].cache_status is CacheStatus.CORRECTION
    assert again.results[0].transcript == "corrected words"


def test_purge_user_makes_every_entry_of_the_user_a_miss(client: Client) -> None:
    t = tenant()
    client.recognize(PCM, config(t, user="alice"))
    assert client.purge_user(t, "alice") >= 2  # the exact and the fuzzy entries
    assert {r.cache_status for r in client.recognize(PCM, config(t, user="bob")).results} == {
        CacheStatus.MISS
    }


def test_the_servers_own_reply_heard_back_is_dropped(client: Client) -> None:
    t = tenant()
    reply = client.synthesize("Your timer is set for ten minutes.", tenant_id=t, user_id="u1")
    heard = np.frombuffer(reply.audio[44:], "<i2").astype(np.float64) * 10 ** (-10 / 20)
    rng = np.random.default_rng(3)
    heard += rng.normal(0, np.sqrt(np.mean(heard**2)) * 0.1, heard.size)  # 20 dB below the speech
    audio = heard.astype("<i2").tobytes()
    cfg = RecognitionConfig(
        encoding=AudioEncoding.LINEAR16, sample_rate_hz=reply.sample_rate_hz, tenant_id=t, user_id="u1"
    )
    dropped = client.recognize(audio, cfg)
    assert dropped.results and {r.cache_status for r in dropped.results} == {CacheStatus.SELF_ECHO}
    assert all(r.transcript == "" for r in dropped.results)
    other = client.recognize(audio, RecognitionConfig(
        encoding=AudioEncoding.LINEAR16, sample_rate_hz=reply.sample_rate_hz, tenant_id=tenant()
    ))  # fmt: skip
    assert "timer" in " ".join(r.transcript for r in other.results).lower()


def test_get_stats_reports_the_tenants_tiers(client: Client) -> None:
    t = tenant()
    client.recognize(PCM, config(t))
    client.recognize(PCM, config(t))
    stats = client.stats(tenant_id=t)
    rows = {row.tier: row for row in stats.tiers}
    assert {row.tenant_id for row in stats.tiers} == {t}
    exact = rows["asr.exact"]
    assert exact.requests == 2 * exact.hits > 0
    assert exact.model_seconds_saved > 0
    assert exact.hit_latency_p50_ms > 0 and exact.miss_latency_p50_ms > 0
    assert 0 < stats.asr_model_bypass_ratio <= 1
    assert len(stats.asr_model_version) == 16


def test_a_repeat_with_other_options_skips_the_encoder(client: Client) -> None:
    t = tenant()
    first = client.recognize(PCM, config(t))
    timed = replace(config(t), word_timestamps=True)
    again = client.recognize(PCM, timed)
    assert {r.cache_status for r in again.results} == {CacheStatus.COMPONENT}
    assert all(r.alternatives[0].words for r in again.results)
    # The text the model gives with these options, encoder and all.
    fresh = client.recognize(PCM, replace(timed, cache_policy=CachePolicy.BYPASS))
    assert [r.transcript for r in again.results] == [r.transcript for r in fresh.results]
    assert len(first.results) == len(again.results)


async def test_a_cached_encoder_output_decodes_to_the_same_tokens(server: RunningServer) -> None:
    recognizer = server.app.runtime.recognizer
    audio = np.frombuffer(PCM, "<i2")[: 5 * 16000].astype(np.float32) / 32768
    kept = await recognizer.decode(
        WindowRequest(audio, DecodeOptions(), keep_encoder_output=True, final=True), final=True, deadline=0
    )
    assert kept.encoder_output is not None and kept.encoder_output.dtype == np.float32
    assert not kept.encoder_reused
    for options in (DecodeOptions(), DecodeOptions(word_timestamps=True), DecodeOptions(max_alternatives=2)):
        fresh = await recognizer.decode(WindowRequest(audio, options, final=True), final=True, deadline=0)
        reused = await recognizer.decode(
            WindowRequest(audio, options, final=True, encoder_output=kept.encoder_output),
            final=True,
            deadline=0,
        )
        assert reused.encoder_reused
        assert reused.alternatives[0].text == fresh.alternatives[0].text
    # An output of another window length is not used: the audio is encoded.
    whole = np.frombuffer(PCM, "<i2").astype(np.float32) / 32768
    longer = await recognizer.decode(
        WindowRequest(whole, DecodeOptions(), final=True, encoder_output=kept.encoder_output),
        final=True,
        deadline=0,
    )
    assert not longer.encoder_reused and "country" in longer.alternatives[0].text


OLD_MODEL = "0123456789abcdef"


def test_after_an_upgrade_an_allowed_older_entry_answers_and_is_refreshed() -> None:
    config_ = ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=1.0, asr_cache_stale_models=OLD_MODEL)
    handle = serve_in_thread(config_.validate())
    try:
        current = handle.running.app.runtime.recognition_cache
        assert current is not None
        t = tenant()
        with Client(handle.running.target, timeout_s=60) as client:
            (result,) = client.recognize(PCM, config(t, user="u1")).results
            # The current model's entry goes (its user's purge); what the model before the upgrade
            # said of this audio is kept under that model's version, owned by no one.
            assert client.purge_user(t, "u1") >= 1
            old = RecognitionCache(current.keyring, OLD_MODEL, RecognitionCacheSettings())
            probe = Probe(RequestContext(tenant_id=t), DecodeOptions(), result.cache_key, 11.0, None)
            said = WindowResult((Alternative("what the older model said", 0.9),))
            stored = old.store(probe, said, Tier.FAST, 0.2)
            asyncio.run_coroutine_threadsafe(stored, handle.running.loop).result(10)
            served = client.recognize(PCM, config(t, user="u2")).results
            assert [(r.cache_status, r.transcript) for r in served] == [
                (CacheStatus.EXACT, "what the older model said")
            ]
            # Refreshed in the background with the current model: its text answers from then on.
            deadline = time.monotonic() + 30
            while client.recognize(PCM, config(t, user="u2")).results[0].transcript != result.transcript:
                assert time.monotonic() < deadline, "the stale entry was not refreshed"
                time.sleep(0.05)
        registry = handle.running.app.runtime.telemetry.registry
        assert registry.get_sample_value("voxwire_asr_cache_stale_total", {"outcome": "served"}) >= 1
        assert registry.get_sample_value("voxwire_asr_cache_stale_total", {"outcome": "refreshed"}) == 1
    finally:
        handle.stop()
