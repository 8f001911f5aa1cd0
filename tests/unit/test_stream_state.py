"""Stream state round-trips through the codec whole, and what is not a state of this version is refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.unit.test_endpointing import EnergyVad, pattern
from voxwire_server.domain import (
    Alternative,
    AudioFormat,
    CachePolicy,
    CacheStatus,
    DecodeOptions,
    Encoding,
    Endpointing,
    PcmFormat,
    RecognitionOptions,
    RequestContext,
    Result,
    Tier,
    UtteranceEnd,
    Word,
)
from voxwire_server.engines.base import DecoderBeam, DecoderState
from voxwire_server.sessions.agreement import LocalAgreement
from voxwire_server.sessions.endpointing import Endpointer
from voxwire_server.sessions.stream_state import KeptFinal, StreamState, StreamStateError
from voxwire_server.storage.codec import pack, unpack

OPTIONS = RecognitionOptions(
    audio=AudioFormat(Encoding.LINEAR16, 16000, 1),
    decode=DecodeOptions(Tier.ACCURATE, "en", True, 2, ("voxwire", "Hibari"), "names"),
    endpointing=Endpointing(silence_ms=450, max_utterance_s=12.5, vad_aggressiveness=3, min_speech_ms=60),
    interim_results=True,
    single_utterance=False,
    context=RequestContext("acme", "alice", CachePolicy.DO_NOT_STORE, "req-1"),
)


def _state() -> StreamState:
    endpointer = Endpointer(EnergyVad(30), OPTIONS.endpointing)
    endpointer.push(pattern(("silence", 0.4), ("speech", 1.2))[:-100])
    agreement = LocalAgreement()
    agreement.restore({"committed": ["turn"], "previous": ["turn", "the", "lights"], "sure": [True] * 3})
    final = Result(
        alternatives=(
            Alternative(
                "Turn on the lights.", 0.91, (Word(" Turn", 0.1, 0.3, 0.95), Word(" on", 0.3, 0.4, 0.9))
            ),
            Alternative("Turn on the light.", 0.52),
        ),
        is_final=True,
        utterance_index=3,
        start_ms=1200,
        end_ms=2750,
        tier=Tier.ACCURATE,
        processing_latency_ms=81.5,
        end=UtteranceEnd.SILENCE,
        cache_status=CacheStatus.FUZZY,
        cache_key="ab" * 32,
    )
    return StreamState(
        key="0123456789abcdef",
        stream_id="stream-1",
        sequence=9,
        model="tiny.en",
        options=OPTIONS,
        endpointer=endpointer.snapshot(),
        received_samples=endpointer.position + 17,
        received_bytes=96_034,
        replay_from_bytes=96_034,
        pcm=PcmFormat(48000, 2, 24, False),
        committed_ms=250,
        previous_text="hello there",
        previous_end=4000,
        agreement=agreement.snapshot(),
        last_partial_at=20_000,
        finals=(KeptFinal(8, final), KeptFinal(9, replace(final, utterance_index=4, end=None))),
        resend_from=7,
        draft=(50257, 400, 401, 13),
        search=SEARCH,
    )


SEARCH = DecoderState(
    window="ab" * 16,
    settings="cd" * 8,
    head=(50257, 50362),
    forced=(400,),
    live=(DecoderBeam((50257, 50362, 400, 401), (0.0, -0.25), False, bytes(range(256)) * 3, (-1, 401)),),
    finished=(DecoderBeam((50257, 50362, 400, 402, 50256), (0.0, -1.5, -0.5), True, b"", (-1, 401, 50256)),),
    no_speech_prob=0.0125,
)


def test_a_state_reads_back_as_it_was_written() -> None:
    state = _state()
    back = StreamState.from_bytes(state.to_bytes())
    assert back.options == OPTIONS
    assert (back.tenant_id, back.user_id) == ("acme", "alice")
    for name in (
        "key",
        "stream_id",
        "sequence",
        "model",
        "received_samples",
        "received_bytes",
        "replay_from_bytes",
        "pcm",
        "committed_ms",
        "previous_text",
        "finals",
        "resend_from",
        "draft",
        "search",
    ):
        assert getattr(back, name) == getattr(state, name), name
    assert back.agreement == state.agreement
    assert back.endpointer.keys() == state.endpointer.keys()
    for key, value in state.endpointer.items():
        assert np.array_equal(back.endpointer[key], value), key
    # What it holds is enough to go on: the endpointer and the agreement restore from it.
    Endpointer(EnergyVad(30), back.options.endpointing).restore(back.endpointer)
    LocalAgreement().restore(back.agreement)


def test_a_state_of_another_version_or_shape_is_refused() -> None:
    raw = unpack(_state().to_bytes())
    with pytest.raises(StreamStateError, match="version 1"):
        StreamState.from_bytes(pack({**raw, "v": 1}))
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({**raw, "sequence": "9"}))
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({k: v for k, v in raw.items() if k != "options"}))
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({**raw, "options": {**raw["options"], "decode": ["medium"]}}))
    with pytest.raises(StreamStateError, match="negative"):
        StreamState.from_bytes(pack({**raw, "received_samples": -1}))
    with pytest.raises(StreamStateError, match="negative"):
        StreamState.from_bytes(pack({**raw, "received_bytes": -2}))
    with pytest.raises(StreamStateError, match="beyond"):
        StreamState.from_bytes(pack({**raw, "replay_from_bytes": 96_036}))
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({**raw, "finals": [[9, ["not", "a", "result"]]]}))
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({**raw, "pcm": [16000]}))
    with pytest.raises(StreamStateError, match="unreadable"):
        StreamState.from_bytes(b"pickle?")
    with pytest.raises(StreamStateError, match="not a map"):
        StreamState.from_bytes(pack([1, 2]))


def test_a_state_without_a_decoder_search_reads_as_one_with_none() -> None:
    # States written before the decoder's draft and search were kept have neither key.
    raw = unpack(_state().to_bytes())
    del raw["draft"], raw["search"]
    back = StreamState.from_bytes(pack(raw))
    assert back.draft == () and back.search is None


def test_a_malformed_decoder_search_is_refused() -> None:
    raw = unpack(_state().to_bytes())
    search = raw["search"]
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({**raw, "search": search[:5]}))
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(
            pack({**raw, "search": [*search[:4], [[[1], [0.5], False, "kv", []]], *search[5:]]})
        )
    with pytest.raises(StreamStateError, match="malformed"):
        StreamState.from_bytes(pack({**raw, "draft": ["400"]}))


def test_the_audio_is_most_of_a_state_and_is_held_once() -> None:
    # 1.6 s of audio heard (0.4 s of it before speech): 51 KB of int16, plus ~1.5 KB of the rest.
    assert len(_state().to_bytes()) < 2 * int(1.6 * 16000) + 2_500
