"""The torch engine on the real tiny.en weights and real speech: its greedy tokens are the CTranslate2
engine's (where they part, at a near tie), a final verified from a partial's draft is free greedy
decoding token for token, a beam search continued from a stream state is the same search, and a
server on the engine streams through the real client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch", reason="the torch engine's tests need PyTorch (pip install 'voxwire[torch]')")

from tests.conftest import serve_in_thread
from tests.helpers import SAMPLE_JFK, require_data, require_data_2, wer
from tests.torch_equality import clips, compare
from voxwire import Client, RecognitionConfig
from voxwire_server.config import ServerConfig
from voxwire_server.domain import AudioFormat, DecodeOptions, Encoding, RecognitionOptions, Tier
from voxwire_server.engines.base import WindowRequest
from voxwire_server.engines.torch_search import SearchRow, SearchSettings, window_fingerprint
from voxwire_server.engines.whisper import WhisperRecognizer
from voxwire_server.sessions.stream_state import StreamState

pytestmark = pytest.mark.e2e

# Share of speech-dev clips whose greedy tokens must equal CTranslate2's (measured: 64 of 68 clips
# <= 29 s; the others part at a near tie, within 0.25 nats, of float rounding).
MIN_SAME = 0.9
NEAR_TIE_NATS = 0.5


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[WhisperRecognizer, WhisperRecognizer]]:
    ct2 = WhisperRecognizer()
    engine = WhisperRecognizer(engine="torch")
    yield ct2, engine
    ct2.close()
    engine.close()


@pytest.mark.timeout(600)
def test_greedy_tokens_are_ctranslate2_s_on_speech_dev(
    engines: tuple[WhisperRecognizer, WhisperRecognizer],
) -> None:
    ct2, engine = engines
    results = [compare(ct2, engine, name, audio) for name, audio in clips(require_data())]
    same = [r for r in results if r.same]
    parted = [r for r in results if not r.same]
    assert len(same) >= MIN_SAME * len(results), [(r.clip, r.ct2_text, r.torch_text) for r in parted]
    for r in parted:
        # The engines part only where the torch decoder was nearly as sure of CTranslate2's token
        # (the margin is recomputed in one pass, so it may come out slightly below 0).
        assert abs(r.margin) < NEAR_TIE_NATS, (r.clip, r.parted_at, r.margin, r.ct2_text, r.torch_text)


def _long_clips(count: int) -> list[tuple[str, np.ndarray]]:
    found = [c for c in clips(require_data_2()) if c[1].size >= 6 * 16000]
    return found[:: max(1, len(found) // count)][:count]


def test_a_final_verified_from_a_partial_s_draft_is_free_greedy_decoding(
    engines: tuple[WhisperRecognizer, WhisperRecognizer],
) -> None:
    _, engine = engines
    assert engine._torch is not None
    for name, audio in _long_clips(6):
        final = WindowRequest(audio, DecodeOptions(), final=True)
        free = engine._decode_speech([final])[0]
        counters = engine._torch.counters
        passes = counters.passes
        engine._decode_speech([final])
        free_passes = counters.passes - passes
        partial = engine._decode_speech([WindowRequest(audio[: audio.size * 3 // 4], DecodeOptions())])[0]
        rng = np.random.default_rng(0)
        for draft in (partial.tokens, tuple(rng.permutation(np.array(partial.tokens)).tolist()), (13,) * 40):
            passes = counters.passes
            got = engine._decode_speech([replace(final, draft=draft)])[0]
            assert got.tokens == free.tokens, name
            # The same numbers, not only the same tokens: every position is computed the same way.
            assert got.alternatives == free.alternatives, name
            if draft == partial.tokens:
                assert counters.passes - passes < free_passes, name


def test_a_beam_search_continued_from_a_stream_state_is_the_same_search(
    engines: tuple[WhisperRecognizer, WhisperRecognizer],
) -> None:
    _, engine = engines
    assert engine._torch is not None
    model = engine._fast
    search = engine._torch._decoders[model.path]
    tokenizer, suppress = model.tokenizer("en")
    audio = _long_clips(1)[0][1]
    request = WindowRequest(audio, DecodeOptions(tier=Tier.ACCURATE))
    window = engine._window(request)
    encoded = np.asarray(engine._encoded(model, [request], window)[0])
    settings = SearchSettings(beam_size=5, num_hypotheses=3, max_length=200, suppress_tokens=tuple(suppress))
    row = SearchRow(
        window_fingerprint(audio, window), (*tokenizer.sot_sequence, tokenizer.no_timestamps), keep_kv=True
    )
    (whole,) = search.beam_search(encoded, [row], settings)
    (stopped,) = search.beam_search(encoded, [row], settings, max_steps=8)
    options = RecognitionOptions(AudioFormat(Encoding.LINEAR16, 16000, 1))
    state = StreamState("k", "s", 1, model.name, options, {}, 0, 0, None, 0, 0, search=stopped.state)
    data = state.to_bytes()
    # Self-attention K-V of 5 beams of ~10 tokens, float16: what a resumed replica reads back.
    assert len(data) > 5 * 8 * search.decoder.kv_bytes_per_token
    restored = StreamState.from_bytes(data).search
    (continued,) = search.beam_search(encoded, [replace(row, state=restored)], settings)
    assert continued.reused
    assert continued.sequences_ids == whole.sequences_ids
    assert continued.scores == whole.scores


def test_a_server_on_the_torch_engine_streams_partials_and_the_final() -> None:
    config = ServerConfig(
        listen="127.0.0.1:0", shutdown_grace_s=1.0, asr_engine="torch", cache="off"
    ).validate()
    handle = serve_in_thread(config)
    try:
        with Client(handle.running.target) as client:
            updates = list(client.stream(SAMPLE_JFK, RecognitionConfig(interim_results=True), realtime=True))
            stats = client.stats()
    finally:
        handle.stop()
    partials = [u.result for u in updates if u.result is not None and not u.result.is_final]
    finals = [u.result for u in updates if u.result is not None and u.result.is_final]
    assert partials and finals
    text = " ".join(f.transcript for f in finals)
    jfk = (
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country."
    )
    assert wer([(jfk, text)]) < 0.1
    assert stats.asr_model_version
