"""A stream's state as one versioned value: what another replica needs to go on where this one was.

Stored through storage/codec.py (msgpack, never pickle). The audio the stream has not finalized
(the utterance in progress, its pre-roll, a part frame) is the endpointer's: for 16 kHz mono PCM
the client, which keeps it anyway, sends it again from ``replay_from_bytes`` (the state stays a
few KB); for other audio it travels inside the endpointer's snapshot and the client sends again
what came after ``received_bytes``. The VAD's own (C) state is not in it: the
endpointer rebuilds it on restore. The finals of the latest writes travel too: a replica may write a
state and die before its final reaches the client, so a resumed stream sends again the finals the
client's token does not cover. On the torch engine the state also holds the last partial's decoder
search, with its float16 self-attention K-V (~6 KiB per token for tiny.en, unless --asr-state-kv off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
from voxwire_server.storage.codec import CodecError, pack, unpack

__all__ = ["STATE_VERSION", "KeptFinal", "PcmFormat", "StreamState", "StreamStateError"]

STATE_VERSION = 2


class StreamStateError(ValueError):
    """Bytes that are not a stream state this server can continue from."""


@dataclass(frozen=True, slots=True)
class KeptFinal:
    """A final sent with the state of ``sequence``: a token of an earlier sequence has not seen it."""

    sequence: int
    result: Result


@dataclass(frozen=True, slots=True)
class StreamState:
    # The key of the stored state (what resume tokens name) and the client's stream id.
    key: str
    stream_id: str
    sequence: int
    # The recognizer that decoded the stream so far: another model does not continue it.
    model: str
    options: RecognitionOptions
    # Endpointer.snapshot(): position, speaking or not, voiced and silent runs, pre-roll, the
    # utterance in progress and a part frame.
    endpointer: dict[str, Any]
    # 16 kHz samples the stream has received (the endpointer's position plus its part frame).
    received_samples: int
    # Bytes of the client's audio messages the state covers (a sample frame split across messages is
    # not covered: it is sent again), and the PCM they decode to (None until a WAV header arrived).
    received_bytes: int
    pcm: PcmFormat | None
    # Where a resume has the client send its audio again from. For 16 kHz mono PCM, whose bytes are
    # the endpointer's samples, the endpointer's audio is left out of the state (its snapshot says
    # how many samples it had: heard_samples, leftover_samples) and comes back from the client, which
    # keeps the audio not covered by finals anyway; otherwise received_bytes.
    replay_from_bytes: int
    # Audio covered by finals (ms), as every response reports it.
    committed_ms: int
    # What was said before (the previous-text context) and where it ended (samples).
    previous_text: str = ""
    previous_end: int = 0
    # LocalAgreement.snapshot() of the utterance in progress.
    agreement: dict[str, Any] = field(default_factory=dict)
    # Where the last partial was taken (samples).
    last_partial_at: int = 0
    # Finals of the latest writes, oldest first; every final after ``resend_from`` is among them, so
    # a token of sequence resend_from or later misses none.
    finals: tuple[KeptFinal, ...] = ()
    resend_from: int = 0
    # The last partial of the utterance in progress, as the decoder left it: its tokens (the draft of
    # the next decode) and, from an engine with an explicit K-V cache, its search (beams, scores,
    # self-attention K-V; valid only for the window it names). Written by later servers; absent in
    # states of earlier ones.
    draft: tuple[int, ...] = ()
    search: DecoderState | None = None

    @property
    def tenant_id(self) -> str:
        return self.options.context.tenant_id

    @property
    def user_id(self) -> str:
        return self.options.context.user_id

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": STATE_VERSION,
                "key": self.key,
                "stream_id": self.stream_id,
                "sequence": self.sequence,
                "model": self.model,
                "options": _options_to_dict(self.options),
                "endpointer": self.endpointer,
                "received_samples": self.received_samples,
                "received_bytes": self.received_bytes,
                "replay_from_bytes": self.replay_from_bytes,
                "pcm": None
                if self.pcm is None
                else [self.pcm.sample_rate_hz, self.pcm.channels, self.pcm.bits, self.pcm.floating],
                "committed_ms": self.committed_ms,
                "previous_text": self.previous_text,
                "previous_end": self.previous_end,
                "agreement": self.agreement,
                "last_partial_at": self.last_partial_at,
                "finals": [[f.sequence, _result_to_list(f.result)] for f in self.finals],
                "resend_from": self.resend_from,
                "draft": list(self.draft),
                "search": None if self.search is None else _search_to_list(self.search),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamState:
        try:
            raw = unpack(data)
        except CodecError as exc:
            raise StreamStateError(f"the stored stream state is unreadable: {exc}") from None
        if not isinstance(raw, dict):
            raise StreamStateError("the stored stream state is not a map")
        if raw.get("v") != STATE_VERSION:
            raise StreamStateError(
                f"the stored stream state has version {raw.get('v')!r}; this server reads {STATE_VERSION}"
            )
        try:
            pcm = raw["pcm"]
            state = cls(
                key=_typed(raw["key"], str),
                stream_id=_typed(raw["stream_id"], str),
                sequence=_typed(raw["sequence"], int),
                model=_typed(raw["model"], str),
                options=_options_from_dict(raw["options"]),
                endpointer=_typed(raw["endpointer"], dict),
                received_samples=_typed(raw["received_samples"], int),
                received_bytes=_typed(raw["received_bytes"], int),
                replay_from_bytes=_typed(raw["replay_from_bytes"], int),
                pcm=None
                if pcm is None
                else PcmFormat(
                    _typed(pcm[0], int), _typed(pcm[1], int), _typed(pcm[2], int), _typed(pcm[3], bool)
                ),
                committed_ms=_typed(raw["committed_ms"], int),
                previous_text=_typed(raw["previous_text"], str),
                previous_end=_typed(raw["previous_end"], int),
                agreement=_typed(raw["agreement"], dict),
                last_partial_at=_typed(raw["last_partial_at"], int),
                finals=tuple(
                    KeptFinal(_typed(seq, int), _result_from_list(r))
                    for seq, r in _typed(raw["finals"], list)
                ),
                resend_from=_typed(raw["resend_from"], int),
                draft=tuple(_typed(t, int) for t in _typed(raw.get("draft", []), list)),
                search=None if raw.get("search") is None else _search_from_list(raw["search"]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise StreamStateError(f"the stored stream state is malformed: {exc}") from None
        offsets = (state.sequence, state.received_samples, state.received_bytes, state.committed_ms)
        if min(*offsets, state.previous_end, state.resend_from, state.replay_from_bytes) < 0:
            raise StreamStateError("the stored stream state has a negative offset")
        if state.replay_from_bytes > state.received_bytes:
            raise StreamStateError("the stored stream state replays from beyond what it received")
        return state


def _typed(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _options_to_dict(o: RecognitionOptions) -> dict[str, Any]:
    e, d, c = o.endpointing, o.decode, o.context
    return {
        "audio": [o.audio.encoding.value, o.audio.sample_rate_hz, o.audio.channels],
        "decode": [
            d.tier.value,
            d.language,
            d.word_timestamps,
            d.max_alternatives,
            list(d.hotwords),
            d.prompt,
        ],
        "endpointing": [
            e.silence_ms,
            e.max_utterance_s,
            e.vad_aggressiveness,
            e.min_speech_ms,
            e.pre_roll_ms,
        ],
        "interim_results": o.interim_results,
        "single_utterance": o.single_utterance,
        "context": [c.tenant_id, c.user_id, c.cache_policy.value, c.request_id],
    }


def _options_from_dict(raw: Any) -> RecognitionOptions:
    audio, decode, endpointing, context = raw["audio"], raw["decode"], raw["endpointing"], raw["context"]
    tier, language, word_timestamps, max_alternatives, hotwords, prompt = decode
    silence_ms, max_utterance_s, vad_aggressiveness, min_speech_ms, pre_roll_ms = endpointing
    tenant_id, user_id, cache_policy, request_id = context
    return RecognitionOptions(
        audio=AudioFormat(Encoding(audio[0]), _typed(audio[1], int), _typed(audio[2], int)),
        decode=DecodeOptions(
            tier=Tier(tier),
            language=_typed(language, str),
            word_timestamps=_typed(word_timestamps, bool),
            max_alternatives=_typed(max_alternatives, int),
            hotwords=tuple(_typed(w, str) for w in hotwords),
            prompt=_typed(prompt, str),
        ),
        endpointing=Endpointing(
            silence_ms=_typed(silence_ms, int),
            max_utterance_s=float(max_utterance_s),
            vad_aggressiveness=_typed(vad_aggressiveness, int),
            min_speech_ms=_typed(min_speech_ms, int),
            pre_roll_ms=_typed(pre_roll_ms, int),
        ),
        interim_results=_typed(raw["interim_results"], bool),
        single_utterance=_typed(raw["single_utterance"], bool),
        context=RequestContext(
            tenant_id=_typed(tenant_id, str),
            user_id=_typed(user_id, str),
            cache_policy=CachePolicy(cache_policy),
            request_id=_typed(request_id, str),
        ),
    )


def _result_to_list(r: Result) -> list[Any]:
    alternatives = [
        [a.text, a.confidence, [[w.text, w.start_s, w.end_s, w.probability] for w in a.words]]
        for a in r.alternatives
    ]
    end = None if r.end is None else r.end.value
    return [
        alternatives, r.utterance_index, r.start_ms, r.end_ms, r.tier.value, r.processing_latency_ms, end,
        r.cache_status.value, r.cache_key,
    ]  # fmt: skip


def _result_from_list(raw: Any) -> Result:
    alternatives, index, start_ms, end_ms, tier, latency_ms, end = raw[:7]
    # The cache fields came later: a state written without them resends its finals without them.
    status, cache_key = raw[7:9] if len(raw) >= 9 else (CacheStatus.NONE.value, "")
    return Result(
        alternatives=tuple(
            Alternative(
                _typed(text, str),
                float(confidence),
                tuple(Word(_typed(w[0], str), float(w[1]), float(w[2]), float(w[3])) for w in words),
            )
            for text, confidence, words in alternatives
        ),
        is_final=True,
        utterance_index=_typed(index, int),
        start_ms=_typed(start_ms, int),
        end_ms=_typed(end_ms, int),
        tier=Tier(tier),
        processing_latency_ms=float(latency_ms),
        end=None if end is None else UtteranceEnd(end),
        cache_status=CacheStatus(status),
        cache_key=_typed(cache_key, str),
    )


def _search_to_list(search: DecoderState) -> list[Any]:
    def beams(items: tuple[DecoderBeam, ...]) -> list[Any]:
        return [[list(b.tokens), list(b.logprobs), b.finished, b.kv, list(b.choices)] for b in items]

    return [
        search.window, search.settings, list(search.head), list(search.forced),
        beams(search.live), beams(search.finished), search.no_speech_prob,
    ]  # fmt: skip


def _search_from_list(raw: Any) -> DecoderState:
    window, settings, head, forced, live, finished, no_speech = _typed(raw, list)

    def beams(items: Any) -> tuple[DecoderBeam, ...]:
        out = []
        for tokens, logprobs, done, kv, choices in _typed(items, list):
            out.append(
                DecoderBeam(
                    tuple(_typed(t, int) for t in _typed(tokens, list)),
                    tuple(_typed(p, float) for p in _typed(logprobs, list)),
                    _typed(done, bool),
                    _typed(kv, bytes),
                    tuple(_typed(t, int) for t in _typed(choices, list)),
                )
            )
        return tuple(out)

    return DecoderState(
        window=_typed(window, str),
        settings=_typed(settings, str),
        head=tuple(_typed(t, int) for t in _typed(head, list)),
        forced=tuple(_typed(t, int) for t in _typed(forced, list)),
        live=beams(live),
        finished=beams(finished),
        no_speech_prob=_typed(no_speech, float),
    )
