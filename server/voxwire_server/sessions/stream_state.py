"""A stream's state as one versioned value: what another replica needs to go on where this one was.

Stored through storage/codec.py (msgpack, never pickle). The audio the stream has not finalized
travels inside the endpointer's snapshot (the utterance in progress, its pre-roll, a part frame);
the client replays what came after ``received_samples``. The VAD's own (C) state is not in it: the
endpointer rebuilds it on restore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voxwire_server.domain import (
    AudioFormat,
    CachePolicy,
    DecodeOptions,
    Encoding,
    Endpointing,
    RecognitionOptions,
    RequestContext,
    Tier,
)
from voxwire_server.storage.codec import CodecError, pack, unpack

__all__ = ["STATE_VERSION", "StreamState", "StreamStateError"]

STATE_VERSION = 1


class StreamStateError(ValueError):
    """Bytes that are not a stream state this server can continue from."""


@dataclass(frozen=True, slots=True)
class StreamState:
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
    # Audio covered by finals (ms), as every response reports it.
    committed_ms: int
    # What was said before (the previous-text context) and where it ended (samples).
    previous_text: str = ""
    previous_end: int = 0
    # LocalAgreement.snapshot() of the utterance in progress.
    agreement: dict[str, Any] = field(default_factory=dict)
    # Where the last partial was taken (samples).
    last_partial_at: int = 0

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
                "stream_id": self.stream_id,
                "sequence": self.sequence,
                "model": self.model,
                "options": _options_to_dict(self.options),
                "endpointer": self.endpointer,
                "received_samples": self.received_samples,
                "committed_ms": self.committed_ms,
                "previous_text": self.previous_text,
                "previous_end": self.previous_end,
                "agreement": self.agreement,
                "last_partial_at": self.last_partial_at,
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
            state = cls(
                stream_id=_typed(raw["stream_id"], str),
                sequence=_typed(raw["sequence"], int),
                model=_typed(raw["model"], str),
                options=_options_from_dict(raw["options"]),
                endpointer=_typed(raw["endpointer"], dict),
                received_samples=_typed(raw["received_samples"], int),
                committed_ms=_typed(raw["committed_ms"], int),
                previous_text=_typed(raw["previous_text"], str),
                previous_end=_typed(raw["previous_end"], int),
                agreement=_typed(raw["agreement"], dict),
                last_partial_at=_typed(raw["last_partial_at"], int),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StreamStateError(f"the stored stream state is malformed: {exc}") from None
        if min(state.sequence, state.received_samples, state.committed_ms, state.previous_end) < 0:
            raise StreamStateError("the stored stream state has a negative offset")
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
