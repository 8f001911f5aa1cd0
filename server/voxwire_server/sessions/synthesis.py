"""Synthesis: validate a request, answer from the caches when they hold it, otherwise synthesize
sentence by sentence (or splice onto a cached template prefix) and encode as it goes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from voxwire_server.caches.recognition import RecognitionCache
from voxwire_server.caches.synthesis import CachedAudio, SynthesisCache, phrase_key, prefix_key
from voxwire_server.config import OUTPUT_SAMPLE_RATES_HZ
from voxwire_server.domain import (
    AudioFormat,
    CachePolicy,
    EncodedAudio,
    Encoding,
    RequestContext,
    SynthesisCacheStatus,
    SynthesisInput,
    SynthesisRequest,
)
from voxwire_server.engines.audio import (
    check_output_format,
    decode_clip,
    float_to_pcm16,
    opus_to_pcm,
    pcm_to_opus,
    wav_header,
)
from voxwire_server.engines.base import SpeechSynthesizer
from voxwire_server.engines.splicing import Prefix
from voxwire_server.errors import InvalidInput, LimitExceeded
from voxwire_server.sessions.reply_audio import ReplyChunks, ReplyEncoder, encode_as
from voxwire_server.sessions.speech_plan import Silence, Speech, Unit, plan_ssml, plan_text
from voxwire_server.sessions.ssml import MAX_RATE, MIN_RATE, parse_ssml
from voxwire_server.sessions.templates import Template, parse_template

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
MISS, HIT, STITCHED, NONE = (
    SynthesisCacheStatus.MISS,
    SynthesisCacheStatus.HIT,
    SynthesisCacheStatus.STITCHED,
    SynthesisCacheStatus.NONE,
)


@dataclass(frozen=True, slots=True)
class SynthesisLimits:
    max_text_chars: int = 5000
    # Words of a cached prefix synthesized again in front of a template's entities, for prosody.
    stitch_context_words: int = 3
    # The joint check: the shared word as cached and as synthesized again may differ this much.
    max_joint_pitch_st: float = 3.0
    max_joint_step_db: float = 10.0
    max_warmup_items: int = 100
    # All phrases and templates of one Warmup together.
    max_warmup_chars: int = 20_000
    # The longest reply (speech and breaks): longer is OUT_OF_RANGE, before any synthesis when
    # the breaks alone are longer, else when synthesis reaches it.
    max_synthesis_s: float = 120.0
    # Phrase cache entries of PCM replies (LINEAR16, WAV) kept as Opus at this bit rate (0: as sent).
    cache_opus_bit_rate: int = 0


@dataclass
class SynthesisHooks:
    """Telemetry callbacks (counters live in metrics.py, not here)."""

    on_units: Callable[[int], None] = field(default=lambda n: None)
    on_stitch: Callable[[bool], None] = field(default=lambda passed: None)


OPUS = "opus"


def _compressed(audio: CachedAudio, bit_rate: int) -> CachedAudio:
    pcm = np.frombuffer(b"".join(audio.chunks), "<i2")
    counts = tuple(len(c) // 2 for c in audio.chunks)
    data = pcm_to_opus(pcm, audio.sample_rate_hz, bit_rate)
    return CachedAudio((data,), audio.durations_ms, audio.sample_rate_hz, OPUS, counts)


def _expanded(hit: CachedAudio) -> CachedAudio:
    """A compressed reply decoded back into chunks of the lengths it was sent in."""
    pcm = opus_to_pcm(b"".join(hit.chunks), hit.sample_rate_hz, sum(hit.chunk_samples))
    ends = np.cumsum(hit.chunk_samples)
    chunks = tuple(
        pcm[end - n : end].astype("<i2").tobytes() for n, end in zip(hit.chunk_samples, ends, strict=True)
    )
    return CachedAudio(chunks, hit.durations_ms, hit.sample_rate_hz)


def _heard(audio: CachedAudio, encoding: Encoding) -> npt.NDArray[np.int16]:
    """A reply's encoded audio as a microphone would give it to the recognizer: 16 kHz int16."""
    data = b"".join(audio.chunks)
    if encoding in (Encoding.LINEAR16, Encoding.WAV):  # cached chunks carry no WAV header
        fmt = AudioFormat(Encoding.LINEAR16, audio.sample_rate_hz, 1)
    else:
        fmt = AudioFormat(encoding)
    return float_to_pcm16(decode_clip(data, fmt))


@dataclass(frozen=True, slots=True)
class _Plan:
    request: SynthesisRequest
    voice: str
    sample_rate_hz: int
    template: Template | None
    key: str


class SynthesisSession:
    def __init__(
        self,
        synthesizer: SpeechSynthesizer,
        limits: SynthesisLimits,
        cache: SynthesisCache | None = None,
        hooks: SynthesisHooks | None = None,
        echo: RecognitionCache | None = None,
    ) -> None:
        """echo: the recognition cache that listens for replies heard back (self-echo)."""
        self._tts = synthesizer
        self._limits = limits
        self._cache = cache
        self._hooks = hooks or SynthesisHooks()
        self._echo = echo

    # -- validation ---------------------------------------------------------------------------

    def _prepare(self, request: SynthesisRequest) -> _Plan:
        text = request.text.strip()
        if not text:
            raise InvalidInput(f"{request.input.value} is empty")
        if len(text) > self._limits.max_text_chars:
            raise InvalidInput(
                f"{request.input.value} is {len(text)} characters; the limit is {self._limits.max_text_chars}"
            )
        if not MIN_RATE <= request.speaking_rate <= MAX_RATE:
            raise InvalidInput(f"speaking_rate must be {MIN_RATE}..{MAX_RATE}, got {request.speaking_rate:g}")
        rate = request.sample_rate_hz or self._tts.sample_rate_hz
        if rate not in OUTPUT_SAMPLE_RATES_HZ:
            allowed = ", ".join(str(r) for r in OUTPUT_SAMPLE_RATES_HZ)
            raise InvalidInput(f"unsupported output sample_rate_hz {rate}; supported: {allowed}")
        if request.encoding is Encoding.FLAC:
            raise InvalidInput("FLAC is not an output encoding; use LINEAR16, WAV or OGG_OPUS")
        check_output_format(request.encoding, rate)
        voice = self._tts.resolve_voice(request.voice)
        template = None
        content = text
        if request.input is SynthesisInput.TEMPLATE:
            template = parse_template(text)
            template.fill(dict(request.entities))
            content = json.dumps([text, sorted(request.entities)], ensure_ascii=False)
        elif request.entities:
            raise InvalidInput("entities are only for template input")
        key = phrase_key(
            request.input.value,
            content,
            voice=voice,
            speaking_rate=request.speaking_rate,
            encoding=request.encoding,
            sample_rate_hz=rate,
            model=self._tts.model_version(voice),
        )
        return _Plan(request, voice, rate, template, key)

    async def _units(self, plan: _Plan, text: str) -> list[Unit]:
        request = plan.request
        if request.input is SynthesisInput.SSML:
            items = parse_ssml(text, phoneme_symbols=self._tts.phoneme_symbols)
            units = await plan_ssml(self._tts, plan.voice, items, request.speaking_rate)
        else:
            units = await plan_text(self._tts, plan.voice, text, request.speaking_rate)
        if not any(isinstance(u, Speech) for u in units):
            raise InvalidInput(f"{request.input.value} has nothing to speak (no pronounceable words)")
        silence_s = sum(u.ms for u in units if isinstance(u, Silence)) / 1000
        if silence_s > self._limits.max_synthesis_s:
            raise LimitExceeded(
                f"the {request.input.value}'s breaks and pauses alone are {silence_s:g} s; a reply may be at "
                f"most {self._limits.max_synthesis_s:g} s (max_synthesis_s)"
            )
        return units

    def _encoder(self, request: SynthesisRequest, sample_rate_hz: int) -> ReplyEncoder:
        return ReplyEncoder(
            request, self._tts.sample_rate_hz, sample_rate_hz, max_duration_s=self._limits.max_synthesis_s
        )

    async def _render(self, voice: str, unit: Unit) -> Float32Array:
        if isinstance(unit, Silence):
            return self._silence(unit)
        self._hooks.on_units(1)
        return await self._tts.render(voice, unit.phonemes, unit.speaking_rate)

    def _silence(self, unit: Silence) -> Float32Array:
        return np.zeros(unit.ms * self._tts.sample_rate_hz // 1000, np.float32)

    async def _emit(
        self, emitter: ReplyEncoder, audio: Float32Array, status: SynthesisCacheStatus, *, last: bool
    ) -> EncodedAudio:
        """Audio made already (cached, spliced) encoded on the synthesis workers, off the event loop."""
        return await self._tts.run(functools.partial(emitter.encode, audio, status, last=last))

    async def _speak(
        self, voice: str, unit: Unit, emitter: ReplyEncoder, status: SynthesisCacheStatus, *, last: bool
    ) -> EncodedAudio:
        """One unit synthesized and encoded in one worker job (no second wait in the workers' queue)."""
        if isinstance(unit, Silence):
            return await self._emit(emitter, self._silence(unit), status, last=last)
        self._hooks.on_units(1)
        return await self._tts.render_then(
            voice,
            unit.phonemes,
            unit.speaking_rate,
            functools.partial(encode_as, emitter, status, last),
        )

    def _uses_cache(self, context: RequestContext) -> bool:
        return self._cache is not None and context.cache_policy is not CachePolicy.BYPASS

    # -- public API ---------------------------------------------------------------------------

    async def stream(self, request: SynthesisRequest) -> AsyncGenerator[EncodedAudio, None]:
        """Yields encoded audio as soon as each piece is ready; cancelling the consumer stops
        synthesis. A reply is stored in the cache only once it was streamed whole."""
        plan = self._prepare(request)
        context = request.context
        if self._uses_cache(context):
            assert self._cache is not None
            hit = await self._cache.get_phrase(self._phrase_key(plan), context)
            if hit is not None:
                hit = await self._expanded(hit)
                for chunk in self._replay(plan, hit)[1]:
                    yield chunk
                await self._listen_for_echo(plan, hit)
                return
        emitter = self._encoder(request, plan.sample_rate_hz)
        try:
            async for chunk in self._produce(plan, emitter, streaming=True):
                yield chunk
            await self._store_reply(plan, emitter)
            await self._listen_for_echo(plan, emitter.cached())
        finally:
            emitter.close()

    async def synthesize(self, request: SynthesisRequest) -> tuple[EncodedAudio, str]:
        """The whole utterance (a WAV has exact sizes) and the voice that spoke it."""
        plan = self._prepare(request)
        context = request.context
        hit = None
        if self._uses_cache(context):
            assert self._cache is not None
            hit = await self._cache.get_phrase(self._phrase_key(plan), context)
        if hit is not None:
            chunks = self._replay(plan, await self._expanded(hit))[0]
        else:
            chunks = emitter = self._encoder(request, plan.sample_rate_hz)
            try:
                async for _ in self._produce(plan, emitter, streaming=False):
                    pass
                await self._store_reply(plan, emitter)
            finally:
                emitter.close()
        await self._listen_for_echo(plan, chunks.cached())
        data = b"".join(chunks.data)
        if request.encoding is Encoding.WAV:
            data = wav_header(plan.sample_rate_hz, 1, len(data)) + data
        statuses = set(chunks.statuses)
        status = (statuses.pop() if len(statuses) == 1 else MISS) if statuses else NONE
        audio = EncodedAudio(
            data=data,
            encoding=request.encoding,
            sample_rate_hz=plan.sample_rate_hz,
            offset_ms=0,
            duration_ms=sum(chunks.durations_ms),
            last=True,
            cache_status=status,
        )
        return audio, plan.voice

    async def warmup(
        self, request: SynthesisRequest, phrases: list[str], templates: list[str]
    ) -> tuple[int, int]:
        """Synthesizes phrases and template prefixes into the global tier (no TTL)."""
        if self._cache is None:
            raise InvalidInput("this server runs without a synthesis cache (--cache off)")
        if not phrases and not templates:
            raise InvalidInput("warmup needs phrases or templates")
        if len(phrases) + len(templates) > self._limits.max_warmup_items:
            raise InvalidInput(
                f"at most {self._limits.max_warmup_items} phrases and templates per warmup call "
                f"(max_warmup_items); got {len(phrases) + len(templates)}"
            )
        chars = sum(len(p) for p in phrases) + sum(len(t) for t in templates)
        if chars > self._limits.max_warmup_chars:
            raise InvalidInput(
                f"a warmup call's phrases and templates may have {self._limits.max_warmup_chars} characters "
                f"in all (max_warmup_chars); got {chars}"
            )
        plans = [self._prepare(replace(request, text=p, input=SynthesisInput.TEXT)) for p in phrases]
        parsed = []
        for source in templates:
            template = parse_template(source)
            names = tuple((name, name.replace("_", " ")) for name in template.slots)
            # Validates the voice, rate and format for templates-only warmups too.
            self._prepare(replace(request, text=source, input=SynthesisInput.TEMPLATE, entities=names))
            parsed.append((source, template))
        n_phrases = n_templates = 0
        for plan in plans:
            emitter = self._encoder(plan.request, plan.sample_rate_hz)
            try:
                async for _ in self._produce(plan, emitter, streaming=False):
                    pass
            finally:
                emitter.close()
            kept = await self._kept(plan, emitter.cached())
            n_phrases += await self._cache.put_phrase(self._phrase_key(plan), None, kept)
        for source, template in parsed:
            # The template spoken with each slot's name in its place stands in for a reply.
            names = tuple((name, name.replace("_", " ")) for name in template.slots)
            stand_in = replace(request, text=source, input=SynthesisInput.TEMPLATE, entities=names)
            plan = _Plan(stand_in, self._tts.resolve_voice(request.voice), 0, template, "")
            split = self._split(template, dict(names))
            if not (split.lead or split.partial):
                continue  # a template that starts with its slot has no prefix to keep
            made = _Made()
            async for _ in self._full_template(plan, split, made):
                pass
            n_templates += await self._store_prefix(plan, None, made)
        return n_phrases, n_templates

    async def _store_reply(self, plan: _Plan, emitter: ReplyEncoder) -> None:
        """A reply made whole (synthesized, stitched onto a cached prefix, or both) is kept under the
        request's cache policy like any other: a repeat is a HIT, and PurgeUser removes it."""
        if self._cache is not None and self._uses_cache(plan.request.context):
            kept = await self._kept(plan, emitter.cached())
            await self._cache.put_phrase(self._phrase_key(plan), plan.request.context, kept)

    def _compresses(self, plan: _Plan) -> bool:
        return bool(self._limits.cache_opus_bit_rate) and plan.request.encoding in (
            Encoding.LINEAR16,
            Encoding.WAV,
        )

    def _phrase_key(self, plan: _Plan) -> str:
        """Compressed entries under keys of their own: a replica without compression (an older one,
        during a rolling update) never finds them and replays Opus bytes as PCM."""
        return f"{plan.key}:opus{self._limits.cache_opus_bit_rate}" if self._compresses(plan) else plan.key

    async def _kept(self, plan: _Plan, audio: CachedAudio) -> CachedAudio:
        """What the phrase cache keeps of a reply: PCM compressed to Opus when the operator asked for it
        (--tts-cache-opus-kbps); everything else as it was sent."""
        if not self._compresses(plan):
            return audio
        return await asyncio.to_thread(_compressed, audio, self._limits.cache_opus_bit_rate)

    async def _expanded(self, hit: CachedAudio) -> CachedAudio:
        return await asyncio.to_thread(_expanded, hit) if hit.codec == OPUS else hit

    async def _listen_for_echo(self, plan: _Plan, audio: CachedAudio) -> None:
        """The recognizer listens for this reply coming back through the tenant's speaker (self-echo):
        a reply it still remembers is listened for again; a new one is decoded back to 16 kHz and
        fingerprinted. Never fails the synthesis."""
        echo = self._echo
        if (
            echo is None
            or not echo.settings.self_echo
            or plan.request.context.cache_policy is not CachePolicy.USE
        ):
            return
        context = plan.request.context
        reply_id = f"{plan.key}:{plan.request.encoding.value}:{plan.sample_rate_hz}"
        try:
            if await echo.remember_reply(context, reply_id, None):
                return
            heard = await asyncio.to_thread(_heard, audio, plan.request.encoding)
            await echo.remember_reply(context, reply_id, heard)
        except Exception as exc:  # the reply was sent whole; listening for its echo is best effort
            log.warning("not listening for the echo of a reply: %s", type(exc).__name__)

    # -- producing audio ----------------------------------------------------------------------

    def _replay(self, plan: _Plan, hit: CachedAudio) -> tuple[ReplyChunks, list[EncodedAudio]]:
        chunks = ReplyChunks(plan.request.encoding, plan.sample_rate_hz)
        out = [
            chunks.add(data, duration_ms, HIT, last=i == len(hit.chunks) - 1)
            for i, (data, duration_ms) in enumerate(zip(hit.chunks, hit.durations_ms, strict=True))
        ]
        return chunks, out

    async def _produce(
        self, plan: _Plan, emitter: ReplyEncoder, *, streaming: bool
    ) -> AsyncIterator[EncodedAudio]:
        status = MISS if self._uses_cache(plan.request.context) else NONE
        if plan.template is not None:
            async for chunk in self._template(plan, emitter, streaming=streaming, status=status):
                yield chunk
            return
        # SSML as sent: error positions refer to the caller's text.
        units = await self._units(plan, plan.request.text)
        for i, unit in enumerate(units):
            yield await self._speak(plan.voice, unit, emitter, status, last=i == len(units) - 1)

    def _split(self, template: Template, entities: dict[str, str]) -> _TemplateSplit:
        """Sentences before the slot's sentence (lead), the slot sentence's words before the slot
        (partial), the rest of that sentence (first_rest) and the sentences after it (following)."""
        prefix = template.prefix
        sentences = self._tts.split_sentences(prefix) if prefix.strip() else []
        if prefix.rstrip().endswith((".", "!", "?", "…")):
            lead, partial = sentences, ""
        else:
            lead, partial = sentences[:-1], (sentences[-1] if sentences else "")
        after = self._tts.split_sentences(template.fill_from_first_slot(entities))
        return _TemplateSplit(" ".join(lead), partial, after[0] if after else "", " ".join(after[1:]))

    async def _template(
        self, plan: _Plan, emitter: ReplyEncoder, *, streaming: bool, status: SynthesisCacheStatus
    ) -> AsyncIterator[EncodedAudio]:
        assert plan.template is not None
        split = self._split(plan.template, dict(plan.request.entities))
        cached = await self._cached_prefix(plan) if split.lead or split.partial else None
        if cached is not None:
            lead_audio, prefix = cached
            head = lead_audio if prefix is None else np.concatenate([lead_audio, prefix.audio])
            if streaming:
                yield await self._emit(emitter, head, STITCHED, last=False)
            # first_rest always holds the slot's value, so there is something to splice on.
            spliced = (
                await self._splice(plan, split, prefix, streaming, status) if prefix is not None else None
            )
            if prefix is None or spliced is not None:
                if not streaming:
                    yield await self._emit(emitter, head, STITCHED, last=False)
                rest = (
                    split.following
                    if spliced
                    else " ".join(x for x in (split.first_rest, split.following) if x)
                )
                units = await self._units(plan, rest) if rest else []
                tail_status = spliced[1] if spliced else STITCHED
                if spliced:
                    yield await self._emit(emitter, spliced[0], tail_status, last=not units)
                for i, unit in enumerate(units):
                    yield await self._speak(plan.voice, unit, emitter, tail_status, last=i == len(units) - 1)
                return
        made = _Made()
        async for audio, last in self._full_template(plan, split, made):
            yield await self._emit(emitter, audio, status, last=last)
        await self._store_prefix(plan, plan.request.context, made)

    async def _splice(
        self,
        plan: _Plan,
        split: _TemplateSplit,
        prefix: Prefix,
        streaming: bool,
        status: SynthesisCacheStatus,
    ) -> tuple[Float32Array, SynthesisCacheStatus] | None:
        """The rest of the slot's sentence spliced onto the cached prefix, and its status. When the
        joint check fails: None if nothing was sent yet (the caller synthesizes the whole reply), else
        a continuation from a synthesis of the whole sentence (with ``status``, MISS)."""
        rate = plan.request.speaking_rate
        rest = await self._tts.phonemes(plan.voice, split.first_rest)
        self._hooks.on_units(1)
        audio, check = await self._tts.continue_prefix(
            plan.voice, prefix, self._limits.stitch_context_words, rest, rate
        )
        passed = check.passes(self._limits.max_joint_pitch_st, self._limits.max_joint_step_db)
        self._hooks.on_stitch(passed)
        if passed:
            return audio, STITCHED
        log.info("joint check failed (%.1f st, %.1f dB): full synthesis", check.pitch_st, check.step_db)
        if not streaming:
            return None
        # The prefix is already out: continue from a synthesis of the whole sentence.
        self._hooks.on_units(1)
        audio, _ = await self._tts.continue_prefix(plan.voice, prefix, len(prefix.words), rest, rate)
        return audio, status

    async def _full_template(
        self, plan: _Plan, split: _TemplateSplit, made: _Made
    ) -> AsyncIterator[tuple[Float32Array, bool]]:
        """The whole reply, sentence by sentence; keeps the lead sentences' audio and the prefix state."""
        lead_units = await self._units(plan, split.lead) if split.lead else []
        following = await self._units(plan, split.following) if split.following else []
        lead: list[Float32Array] = []
        for unit in lead_units:
            audio = await self._render(plan.voice, unit)
            lead.append(audio)
            yield audio, False
        made.lead = np.concatenate(lead) if lead else np.zeros(0, np.float32)
        if split.partial and self._tts.can_splice(plan.voice):
            words = (await self._tts.phonemes(plan.voice, split.partial)).split()
            rest = await self._tts.phonemes(plan.voice, split.first_rest)
            self._hooks.on_units(1)
            audio, made.prefix = await self._tts.render_split(
                plan.voice, words, rest, plan.request.speaking_rate
            )
            yield audio, not following
        else:
            sentence = " ".join(x for x in (split.partial, split.first_rest) if x)
            units = await self._units(plan, sentence)
            for i, unit in enumerate(units):
                yield await self._render(plan.voice, unit), not following and i == len(units) - 1
        # A partial sentence can only be continued later from its prefix state.
        made.complete = not split.partial or made.prefix is not None
        for i, unit in enumerate(following):
            yield await self._render(plan.voice, unit), i == len(following) - 1

    def _prefix_key(self, plan: _Plan) -> str:
        assert plan.template is not None
        return prefix_key(
            plan.template.source,
            voice=plan.voice,
            speaking_rate=plan.request.speaking_rate,
            model=self._tts.model_version(plan.voice),
        )

    async def _cached_prefix(self, plan: _Plan) -> tuple[Float32Array, Prefix | None] | None:
        if not self._uses_cache(plan.request.context):
            return None
        assert self._cache is not None
        value = await self._cache.get_prefix(self._prefix_key(plan), plan.request.context)
        if value is None:
            return None
        prefix = Prefix.from_dict(value["prefix"]) if value.get("prefix") else None
        return np.asarray(value["lead"], np.float32), prefix

    async def _store_prefix(self, plan: _Plan, context: RequestContext | None, made: _Made) -> bool:
        """context None: the global tier (Warmup)."""
        if self._cache is None or not made.complete or (made.prefix is None and not made.lead.size):
            return False
        value = {"lead": made.lead, "prefix": made.prefix.to_dict() if made.prefix is not None else None}
        return await self._cache.put_prefix(self._prefix_key(plan), context, value)


@dataclass(frozen=True, slots=True)
class _TemplateSplit:
    lead: str
    partial: str
    first_rest: str
    following: str


@dataclass
class _Made:
    """What a full synthesis of a template leaves for the prefix cache."""

    lead: Float32Array = field(default_factory=lambda: np.zeros(0, np.float32))
    prefix: Prefix | None = None
    # False until the reply was made whole, and when the prefix could not be captured.
    complete: bool = False
