"""Hotwords and prompts condition only their own request's decode, also when finals share a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import RunningServer, serve_in_thread
from tests.helpers import speech_clips
from voxwire import AsyncClient, RecognitionConfig
from voxwire_server.config import ServerConfig
from voxwire_server.domain import AudioFormat, DecodeOptions, Encoding
from voxwire_server.engines.audio import decode_clip
from voxwire_server.engines.base import WindowRequest
from voxwire_server.engines.whisper import WhisperRecognizer

# "... Tom, apologized Whittemore.": alone, tiny.en hears "with more"; conditioned on the name it
# writes "Whitmore". "Whittemore" and "Zanzibar" (and the two prompts) are the same number of
# tokens, the case where the decoder once let one request's context decode the other's window.
CLIP = "arctic_slt_a0002"
PAIRS = [
    (RecognitionConfig(hotwords=("Whittemore",)), RecognitionConfig(hotwords=("Zanzibar",))),
    (RecognitionConfig(prompt="Whittemore apologized."), RecognitionConfig(prompt="Zanzibar apologized.")),
]


@pytest.fixture(scope="module")
def batching_server() -> Iterator[RunningServer]:
    # One worker that waits long for a batch of two to fill: two finals sent together meet in one
    # batch whenever their batch keys allow it.
    handle = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0",
            asr_workers=1,
            max_batch=2,
            max_batch_wait_ms=2000,
            escalation_confidence=0.0,
            shutdown_grace_s=1.0,
            # The same clip is sent again and again: it must reach the decoder every time.
            asr_cache_tiers="",
        )
    )
    yield handle.running
    handle.stop()


@pytest.mark.parametrize(("boosted", "other"), PAIRS, ids=["hotwords", "prompt"])
async def test_concurrent_finals_each_keep_their_own_conditioning(
    batching_server: RunningServer, boosted: RecognitionConfig, other: RecognitionConfig
) -> None:
    (clip,) = speech_clips([CLIP])
    recognizer = batching_server.app.runtime.recognizer
    assert isinstance(recognizer, WhisperRecognizer)
    async with AsyncClient(batching_server.target, timeout_s=60) as client:
        # Alone first: what each conditioning gives on its own.
        alone = [(await client.recognize(str(clip.path), c)).text for c in (boosted, other)]
        assert "whitmore" in alone[0].lower(), alone
        assert "whitmore" not in alone[1].lower(), alone
        # Then both at once, in both orders: each result must be what it was alone.
        for first, second in ((boosted, other), (other, boosted)):
            together = await asyncio.gather(
                client.recognize(str(clip.path), first), client.recognize(str(clip.path), second)
            )
            expected = alone if first is boosted else alone[::-1]
            assert [t.text for t in together] == expected


async def test_finals_with_the_same_conditioning_still_share_a_batch(batching_server: RunningServer) -> None:
    (clip,) = speech_clips([CLIP])
    recognizer = batching_server.app.runtime.recognizer
    assert isinstance(recognizer, WhisperRecognizer)
    config = PAIRS[0][0]
    async with AsyncClient(batching_server.target, timeout_s=60) as client:
        before = recognizer.batching.batches_run
        results = await asyncio.gather(*(client.recognize(str(clip.path), config) for _ in range(2)))
    assert recognizer.batching.batches_run - before == 1
    assert results[0].text == results[1].text


async def test_previous_text_conditions_the_next_utterance_of_its_own_request_only(
    batching_server: RunningServer,
) -> None:
    # The sentence before, as a stream's earlier final: it carries the name, so the utterance is
    # written with it; another stream's history of the same (bucketed) length in the same batch
    # does not. Both decode in one batch, each as it would alone.
    (clip,) = speech_clips([CLIP])
    recognizer = batching_server.app.runtime.recognizer
    assert isinstance(recognizer, WhisperRecognizer)
    audio = decode_clip(clip.path.read_bytes(), AudioFormat(Encoding.WAV))
    named = WindowRequest(audio, DecodeOptions(), context="Tom met Mr. Whittemore at the station.")
    other = WindowRequest(audio, DecodeOptions(), context="Tom met Mr. Zanzibar at the station.")
    assert recognizer.batch_key(named) == recognizer.batch_key(other)
    alone = [
        (await recognizer.decode(r, final=True, deadline=0.0)).alternatives[0].text for r in (named, other)
    ]
    assert "whitmore" in alone[0].lower() and "whitmore" not in alone[1].lower(), alone
    before = recognizer.batching.batches_run
    together = await asyncio.gather(*(recognizer.decode(r, final=True, deadline=0.0) for r in (other, named)))
    assert recognizer.batching.batches_run - before == 1
    assert [t.alternatives[0].text for t in together] == alone[::-1]
