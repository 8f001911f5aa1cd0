from __future__ import annotations

import asyncio
import re
import struct
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from voxwire_server.caches.synthesis import SynthesisCache, TierStats
from voxwire_server.domain import (
    CachePolicy,
    EncodedAudio,
    Encoding,
    RequestContext,
    SynthesisCacheStatus,
    SynthesisInput,
    SynthesisRequest,
    VoiceInfo,
)
from voxwire_server.engines.audio import float_to_pcm16, wav_header
from voxwire_server.engines.base import SpeechSynthesizer
from voxwire_server.engines.splicing import (
    CROSSFADE_SAMPLES,
    FRAME_SAMPLES,
    Frames,
    JointCheck,
    Prefix,
    make_prefix,
)
from voxwire_server.errors import InvalidInput, NotFound
from voxwire_server.sessions.reply_audio import ReplyEncoder
from voxwire_server.sessions.synthesis import SynthesisHooks, SynthesisLimits, SynthesisSession
from voxwire_server.storage import MemoryStore

T = TypeVar("T")

MISS, HIT, STITCHED, NONE = (
    SynthesisCacheStatus.MISS,
    SynthesisCacheStatus.HIT,
    SynthesisCacheStatus.STITCHED,
    SynthesisCacheStatus.NONE,
)
RATE_HZ = 24000
ALICE = RequestContext(tenant_id="acme", user_id="alice")
BOB = RequestContext(tenant_id="acme", user_id="bob")
GOOD_JOINT = JointCheck(pitch_st=0.5, step_db=1.0)
BAD_JOINT = JointCheck(pitch_st=5.0, step_db=1.0)
Float32Array = npt.NDArray[np.float32]


def tone(n_samples: int, hz: float) -> Float32Array:
    t = np.arange(n_samples, dtype=np.float32) / RATE_HZ
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def unit_audio(unit: str, speaking_rate: float) -> Float32Array:
    """What FakeEngine.render returns: 5 ms per character, faster speech shorter."""
    return tone(round(len(unit) * 120 / speaking_rate), 220.0)


def pcm(audio: Float32Array) -> bytes:
    return float_to_pcm16(audio).astype("<i2").tobytes()


class FakeEngine:
    """A deterministic SpeechSynthesizer: sentences split after . ! ?, "phonemes" are the lower-cased
    text, audio is a tone whose length follows the text. render_split builds a real Prefix from
    synthetic frames (12 frames a word); continue_prefix answers with a configurable JointCheck.
    render can be held on an event (self.hold names the unit) to test cancellation."""

    model_name = "fake-tts 1"
    sample_rate_hz = RATE_HZ
    phoneme_symbols = frozenset("abcdefghijklmnopqrstuvwxyz .,!?'")

    def __init__(self, joint: JointCheck = GOOD_JOINT, splice: bool = True, short: bool = False) -> None:
        self.joint = joint
        self.splice = splice
        self.short = short  # render_split finds the prefix too short to splice onto
        self.calls: list[tuple[Any, ...]] = []
        self.prefixes: list[Prefix] = []
        self.hold: str | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled: list[str] = []
        self.offloaded = 0

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("fake", "en", "US", "female", RATE_HZ, True)]

    def resolve_voice(self, name: str) -> str:
        if name in ("", "fake"):
            return "fake"
        raise NotFound(f"unknown voice {name!r}")

    def model_version(self, voice: str) -> str:
        return f"{self.model_name}/{voice}"

    def can_splice(self, voice: str) -> bool:
        return self.splice

    def split_sentences(self, text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]

    async def plan(self, voice: str, text: str) -> list[str]:
        return [s.lower() for s in self.split_sentences(text) if any(c.isalpha() for c in s)]

    async def phonemes(self, voice: str, text: str) -> str:
        return " ".join(text.lower().split())

    async def render(self, voice: str, unit: str, speaking_rate: float) -> Float32Array:
        self.calls.append(("render", unit, speaking_rate))
        if unit == self.hold:
            self.holding.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(unit)
                raise
        return unit_audio(unit, speaking_rate)

    async def render_then(
        self, voice: str, unit: str, speaking_rate: float, then: Callable[[Float32Array], T]
    ) -> T:
        audio = await self.render(voice, unit, speaking_rate)
        return await self.run(lambda: then(audio))

    async def run(self, work: Callable[[], T]) -> T:
        # On a thread, as the real engine does: the session must not rely on running it in place.
        self.offloaded += 1
        return await asyncio.to_thread(work)

    async def render_split(
        self, voice: str, prefix_words: list[str], rest: str, speaking_rate: float
    ) -> tuple[Float32Array, Prefix | None]:
        self.calls.append(("split", tuple(prefix_words), rest, speaking_rate))
        if self.short:
            return unit_audio(" ".join([*prefix_words, rest]), speaking_rate), None
        words = [*prefix_words, *rest.split()]
        starts = tuple(2 + 12 * i for i in range(len(words)))
        ends = tuple(s + 10 for s in starts)
        total = ends[-1] + 4
        spectra = np.full((5, 2, total), -1.0, np.float32)
        for end in ends:  # a quiet pause after every word: the joint lands there
            spectra[[0, 2, 3], :, end : end + 2] = -20.0
        frames = Frames(spectra, np.full(total, 150.0, np.float32), starts, ends)
        audio = tone(total * FRAME_SAMPLES, 330.0)
        prefix = make_prefix(frames, audio, prefix_words)
        self.prefixes.append(prefix)
        return audio, prefix

    async def continue_prefix(
        self, voice: str, prefix: Prefix, context_words: int, rest: str, speaking_rate: float
    ) -> tuple[Float32Array, JointCheck]:
        self.calls.append(("continue", context_words, rest, speaking_rate))
        return tone(CROSSFADE_SAMPLES + 120 * len(rest), 440.0), self.joint

    def close(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [call[0] for call in self.calls]


@dataclass
class Setup:
    engine: FakeEngine
    cache: SynthesisCache
    session: SynthesisSession
    units: list[int] = field(default_factory=list)
    stitches: list[bool] = field(default_factory=list)

    async def stats(self) -> dict[str, TierStats]:
        return {row.tier: row for row in await self.cache.stats()}

    async def entries(self) -> int:
        return sum(row.entries for row in await self.cache.stats())


def make_setup(engine: FakeEngine | None = None, limits: SynthesisLimits | None = None) -> Setup:
    """A session over the fake engine and a real cache on a MemoryStore, recording its hooks."""
    engine = engine or FakeEngine()
    synthesizer: SpeechSynthesizer = engine  # the fake must satisfy the protocol
    cache = SynthesisCache(MemoryStore(1 << 24), personal_ttl_s=300.0)
    units: list[int] = []
    stitches: list[bool] = []
    hooks = SynthesisHooks(on_units=units.append, on_stitch=stitches.append)
    session = SynthesisSession(synthesizer, limits or SynthesisLimits(), cache, hooks)
    return Setup(engine, cache, session, units, stitches)


@pytest.fixture
def setup() -> Setup:
    return make_setup()


def request(text: str, **kwargs: Any) -> SynthesisRequest:
    kwargs.setdefault("encoding", Encoding.LINEAR16)
    kwargs.setdefault("context", ALICE)
    return SynthesisRequest(text=text, **kwargs)


async def collect(session: SynthesisSession, req: SynthesisRequest) -> list[EncodedAudio]:
    return [chunk async for chunk in session.stream(req)]


def statuses(chunks: list[EncodedAudio]) -> list[SynthesisCacheStatus]:
    return [c.cache_status for c in chunks]


TWO_SENTENCES = "Lights are on. The door is locked."
SENTENCE_UNITS = ["lights are on.", "the door is locked."]


# -- text: miss, then hit ---------------------------------------------------------------------------


async def test_streamed_text_is_a_miss_then_a_hit_with_the_same_bytes(setup: Setup) -> None:
    req = request(TWO_SENTENCES, encoding=Encoding.WAV)
    first = await collect(setup.session, req)
    assert statuses(first) == [MISS, MISS]
    audio = [unit_audio(u, 1.0) for u in SENTENCE_UNITS]
    assert first[0].data == wav_header(RATE_HZ, 1, None) + pcm(audio[0])
    assert first[1].data == pcm(audio[1])
    assert not first[1].data.startswith(b"RIFF")
    assert [c.duration_ms for c in first] == [a.size * 1000 // RATE_HZ for a in audio]
    assert [c.offset_ms for c in first] == [0, first[0].duration_ms]
    assert [c.last for c in first] == [False, True]
    assert setup.engine.calls == [("render", u, 1.0) for u in SENTENCE_UNITS]
    assert setup.units == [1, 1]

    second = await collect(setup.session, req)
    assert statuses(second) == [HIT, HIT]
    assert [c.data for c in second] == [c.data for c in first]
    assert [(c.offset_ms, c.duration_ms, c.last) for c in second] == [
        (c.offset_ms, c.duration_ms, c.last) for c in first
    ]
    assert [(c.encoding, c.sample_rate_hz) for c in second] == [(Encoding.WAV, RATE_HZ)] * 2
    assert len(setup.engine.calls) == 2  # nothing rendered again
    stats = await setup.stats()
    assert (stats["tts.phrase.personal"].entries, stats["tts.phrase.personal"].hits) == (1, 1)


async def test_unary_text_is_a_miss_then_a_hit_with_exact_wav_sizes(setup: Setup) -> None:
    req = request(TWO_SENTENCES, encoding=Encoding.WAV)
    first, voice = await setup.session.synthesize(req)
    assert voice == "fake"
    body = b"".join(pcm(unit_audio(u, 1.0)) for u in SENTENCE_UNITS)
    assert first.data == wav_header(RATE_HZ, 1, len(body)) + body
    assert struct.unpack_from("<I", first.data, 4)[0] == 36 + len(body)
    assert struct.unpack_from("<I", first.data, 40)[0] == len(body)
    assert first.cache_status is MISS
    assert first.last and first.offset_ms == 0
    assert first.duration_ms == sum(unit_audio(u, 1.0).size * 1000 // RATE_HZ for u in SENTENCE_UNITS)

    second, _ = await setup.session.synthesize(req)
    assert second.cache_status is HIT
    assert second.data == first.data
    assert second.duration_ms == first.duration_ms
    assert len(setup.engine.calls) == 2


async def test_a_streamed_reply_answers_a_later_unary_request(setup: Setup) -> None:
    req = request(TWO_SENTENCES, encoding=Encoding.WAV)
    streamed = await collect(setup.session, req)
    unary, _ = await setup.session.synthesize(req)
    assert unary.cache_status is HIT
    body = b"".join(c.data for c in streamed)[44:]
    assert unary.data == wav_header(RATE_HZ, 1, len(body)) + body


async def test_resampled_wav_has_the_requested_rate_and_exact_sizes(setup: Setup) -> None:
    audio, _ = await setup.session.synthesize(
        request(TWO_SENTENCES, encoding=Encoding.WAV, sample_rate_hz=16000)
    )
    assert audio.sample_rate_hz == 16000
    assert struct.unpack_from("<I", audio.data, 24)[0] == 16000
    assert struct.unpack_from("<I", audio.data, 40)[0] == len(audio.data) - 44
    native = sum(unit_audio(u, 1.0).size for u in SENTENCE_UNITS)
    assert abs((len(audio.data) - 44) // 2 - native * 2 // 3) <= 64


async def test_other_users_do_not_hit_a_personal_reply(setup: Setup) -> None:
    await collect(setup.session, request(TWO_SENTENCES))
    assert statuses(await collect(setup.session, request(TWO_SENTENCES, context=BOB))) == [MISS, MISS]


# -- without a cache, and cache policies ------------------------------------------------------------


async def test_without_a_cache_the_status_is_none() -> None:
    engine = FakeEngine()
    session = SynthesisSession(engine, SynthesisLimits())
    req = request(TWO_SENTENCES)
    assert statuses(await collect(session, req)) == [NONE, NONE]
    audio, _ = await session.synthesize(req)
    assert audio.cache_status is NONE
    assert audio.data == b"".join(pcm(unit_audio(u, 1.0)) for u in SENTENCE_UNITS)
    assert len(engine.calls) == 4


async def test_do_not_store_reads_the_cache_but_never_fills_it(setup: Setup) -> None:
    private = request(TWO_SENTENCES, context=replace(ALICE, cache_policy=CachePolicy.DO_NOT_STORE))
    assert statuses(await collect(setup.session, private)) == [MISS, MISS]
    assert (await setup.session.synthesize(private))[0].cache_status is MISS
    assert await setup.entries() == 0
    await collect(setup.session, request(TWO_SENTENCES))
    assert statuses(await collect(setup.session, private)) == [HIT, HIT]
    assert len(setup.engine.calls) == 6


async def test_bypass_neither_reads_nor_fills_the_cache(setup: Setup) -> None:
    bypass = request(TWO_SENTENCES, context=replace(ALICE, cache_policy=CachePolicy.BYPASS))
    assert statuses(await collect(setup.session, bypass)) == [NONE, NONE]
    assert await setup.entries() == 0
    await collect(setup.session, request(TWO_SENTENCES))
    assert statuses(await collect(setup.session, bypass)) == [NONE, NONE]
    audio, _ = await setup.session.synthesize(bypass)
    assert audio.cache_status is NONE
    assert len(setup.engine.calls) == 8
    stats = await setup.stats()
    assert stats["tts.phrase.personal"].hits == 0
    assert stats["tts.phrase.personal"].entries == 1


# -- SSML -------------------------------------------------------------------------------------------


async def test_ssml_goes_through_the_planner(setup: Setup) -> None:
    ssml = '<speak>Hello there.<break time="500ms"/><prosody rate="slow">Goodbye now.</prosody></speak>'
    chunks = await collect(setup.session, request(ssml, input=SynthesisInput.SSML, speaking_rate=2.0))
    assert setup.engine.calls == [("render", "hello there.", 2.0), ("render", "goodbye now.", 1.6)]
    assert len(chunks) == 3
    assert chunks[1].data == bytes(RATE_HZ)  # 500 ms of 16-bit silence
    assert chunks[1].duration_ms == 500
    assert chunks[2].data == pcm(unit_audio("goodbye now.", 1.6))
    assert statuses(chunks) == [MISS] * 3
    assert setup.units == [1, 1]  # the silence is no model call


async def test_ssml_and_text_of_the_same_words_are_different_phrases(setup: Setup) -> None:
    await collect(setup.session, request("Hello there."))
    chunks = await collect(setup.session, request("<speak>Hello there.</speak>", input=SynthesisInput.SSML))
    assert statuses(chunks) == [MISS]


async def test_ssml_errors_are_invalid_input(setup: Setup) -> None:
    with pytest.raises(InvalidInput, match="line 1, column"):
        await collect(setup.session, request("<speak><b>x</b></speak>", input=SynthesisInput.SSML))


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request("   "), "text is empty"),
        (request("x" * 5001), "5001 characters; the limit is 5000"),
        (request("Hi.", speaking_rate=0.4), "speaking_rate must be"),
        (request("Hi.", speaking_rate=2.5), "speaking_rate must be"),
        (request("Hi.", sample_rate_hz=44100), "unsupported output sample_rate_hz 44100"),
        (request("Hi.", encoding=Encoding.FLAC), "FLAC is not an output encoding"),
        (request("Hi.", encoding=Encoding.OGG_OPUS, sample_rate_hz=22050), "OGG_OPUS output supports"),
        (request("Hi.", entities=(("song", "x"),)), "entities are only for template input"),
        (request("Next is {song}.", input=SynthesisInput.TEMPLATE), "missing a value for: song"),
        (request("Next is {song", input=SynthesisInput.TEMPLATE, entities=(("song", "x"),)), "never closed"),
        (request("...?!"), "nothing to speak"),
    ],
)
async def test_invalid_requests_raise_invalid_input(
    setup: Setup, req: SynthesisRequest, message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        await setup.session.stream(req).__anext__()
    with pytest.raises(InvalidInput, match=re.escape(message)):
        await setup.session.synthesize(req)
    assert setup.engine.calls == []
    assert await setup.entries() == 0


async def test_an_unknown_voice_is_not_found(setup: Setup) -> None:
    with pytest.raises(NotFound):
        await setup.session.synthesize(request("Hi.", voice="nobody"))


# -- templates --------------------------------------------------------------------------------------

TEMPLATE = "Welcome back. Coming up next is {song} by {artist}. Enjoy!"
YELLOW = (("song", "Yellow"), ("artist", "Coldplay"))
JUDE = (("song", "Hey  Jude"), ("artist", "The Beatles"))


def template(entities: tuple[tuple[str, str], ...], **kwargs: Any) -> SynthesisRequest:
    return request(TEMPLATE, input=SynthesisInput.TEMPLATE, entities=entities, **kwargs)


async def test_a_template_is_a_miss_that_stores_its_prefix(setup: Setup) -> None:
    chunks = await collect(setup.session, template(YELLOW))
    assert statuses(chunks) == [MISS, MISS, MISS]
    assert setup.engine.calls == [
        ("render", "welcome back.", 1.0),
        ("split", ("coming", "up", "next", "is"), "yellow by coldplay.", 1.0),
        ("render", "enjoy!", 1.0),
    ]
    assert [c.last for c in chunks] == [False, False, True]
    stats = await setup.stats()
    assert stats["tts.prefix.personal"].entries == 1
    assert stats["tts.phrase.personal"].entries == 1
    # The same entities again: the whole reply comes from the phrase cache.
    assert statuses(await collect(setup.session, template(YELLOW))) == [HIT, HIT, HIT]


async def test_a_template_with_other_entities_is_stitched_onto_the_cached_prefix(setup: Setup) -> None:
    first = await collect(setup.session, template(YELLOW))
    prefix = setup.engine.prefixes[0]
    setup.engine.calls.clear()
    setup.units.clear()

    chunks = await collect(setup.session, template(JUDE))
    assert statuses(chunks) == [STITCHED, STITCHED, STITCHED]
    lead = unit_audio("welcome back.", 1.0)
    assert chunks[0].data == pcm(np.concatenate([lead, prefix.audio]))
    # The cached audio is the first reply's, up to the crossfade before the joint.
    assert chunks[0].data == b"".join(c.data for c in first)[: len(chunks[0].data)]
    assert setup.engine.calls == [
        ("continue", 3, "hey jude by the beatles.", 1.0),
        ("render", "enjoy!", 1.0),
    ]
    assert chunks[1].data == pcm(tone(CROSSFADE_SAMPLES + 120 * len("hey jude by the beatles."), 440.0))
    assert [c.last for c in chunks] == [False, False, True]
    assert setup.stitches == [True]
    assert setup.units == [1, 1]
    # A stitched reply is stored like any other: the same request again replays it.
    assert (await setup.stats())["tts.phrase.personal"].entries == 2
    setup.engine.calls.clear()
    again = await collect(setup.session, template(JUDE))
    assert statuses(again) == [HIT, HIT, HIT]
    assert b"".join(c.data for c in again) == b"".join(c.data for c in chunks)
    assert setup.engine.calls == []


async def test_a_unary_template_is_stitched(setup: Setup) -> None:
    await collect(setup.session, template(YELLOW))
    prefix = setup.engine.prefixes[0]
    audio, _ = await setup.session.synthesize(template(JUDE))
    assert audio.cache_status is STITCHED
    rest = "hey jude by the beatles."
    parts = [
        unit_audio("welcome back.", 1.0),
        prefix.audio,
        tone(CROSSFADE_SAMPLES + 120 * len(rest), 440.0),
        unit_audio("enjoy!", 1.0),
    ]
    assert audio.data == pcm(np.concatenate(parts[:2])) + pcm(parts[2]) + pcm(parts[3])
    assert setup.stitches == [True]


async def test_a_failed_joint_check_continues_the_stream_as_a_miss() -> None:
    setup = make_setup(FakeEngine(joint=BAD_JOINT))
    await collect(setup.session, template(YELLOW))
    prefix = setup.engine.prefixes[0]
    setup.engine.calls.clear()

    chunks = await collect(setup.session, template(JUDE))
    assert statuses(chunks) == [STITCHED, MISS, MISS]
    assert setup.stitches == [False]
    # The prefix was already sent: the rest is synthesized with the whole prefix sentence as context.
    assert setup.engine.calls == [
        ("continue", 3, "hey jude by the beatles.", 1.0),
        ("continue", len(prefix.words), "hey jude by the beatles.", 1.0),
        ("render", "enjoy!", 1.0),
    ]
    assert chunks[-1].last
    # Made whole (a stitched prefix and a synthesized rest), the reply is kept for a repeat.
    assert (await setup.stats())["tts.phrase.personal"].entries == 2
    assert statuses(await collect(setup.session, template(JUDE))) == [HIT, HIT, HIT]


async def test_every_model_call_of_a_failed_stitch_is_counted() -> None:
    setup = make_setup(FakeEngine(joint=BAD_JOINT))
    await collect(setup.session, template(YELLOW))
    setup.engine.calls.clear()
    setup.units.clear()
    await collect(setup.session, template(JUDE))
    assert len(setup.units) == len(setup.engine.calls) == 3


async def test_a_failed_joint_check_makes_a_unary_reply_a_full_synthesis() -> None:
    setup = make_setup(FakeEngine(joint=BAD_JOINT))
    await collect(setup.session, template(YELLOW))
    setup.engine.calls.clear()

    audio, _ = await setup.session.synthesize(template(JUDE))
    assert audio.cache_status is MISS
    assert setup.stitches == [False]
    assert setup.engine.calls == [
        ("continue", 3, "hey jude by the beatles.", 1.0),
        ("render", "welcome back.", 1.0),
        ("split", ("coming", "up", "next", "is"), "hey jude by the beatles.", 1.0),
        ("render", "enjoy!", 1.0),
    ]
    reference, _ = await SynthesisSession(FakeEngine(), SynthesisLimits()).synthesize(template(JUDE))
    assert audio.data == reference.data
    # A full synthesis is a phrase like any other.
    assert (await setup.stats())["tts.phrase.personal"].entries == 2


async def test_a_template_whose_prefix_is_whole_sentences_caches_their_audio(setup: Setup) -> None:
    source = "Welcome back. {song} is up next."
    first = await collect(
        setup.session, request(source, input=SynthesisInput.TEMPLATE, entities=(("song", "Yellow"),))
    )
    assert statuses(first) == [MISS, MISS]
    setup.engine.calls.clear()
    chunks = await collect(
        setup.session, request(source, input=SynthesisInput.TEMPLATE, entities=(("song", "Help"),))
    )
    assert statuses(chunks) == [STITCHED, STITCHED]
    assert chunks[0].data == first[0].data
    assert setup.engine.calls == [("render", "help is up next.", 1.0)]


async def test_a_template_is_not_spliced_when_the_voice_cannot(setup: Setup) -> None:
    setup = make_setup(FakeEngine(splice=False))
    source = "Coming up next is {song}."
    for song in ("Yellow", "Help"):
        req = request(source, input=SynthesisInput.TEMPLATE, entities=(("song", song),))
        assert statuses(await collect(setup.session, req)) == [MISS]
    assert setup.engine.kinds() == ["render", "render"]
    assert (await setup.stats())["tts.prefix.personal"].entries == 0


async def test_a_prefix_too_short_to_splice_is_rendered_once_and_not_cached() -> None:
    setup = make_setup(FakeEngine(short=True))
    req = request("Hi {name}.", input=SynthesisInput.TEMPLATE, entities=(("name", "Bob"),))
    chunks = await collect(setup.session, req)
    assert statuses(chunks) == [MISS]
    assert chunks[0].data == pcm(unit_audio("hi bob.", 1.0))
    assert setup.engine.kinds() == ["split"]
    assert (await setup.stats())["tts.prefix.personal"].entries == 0


async def test_a_cached_prefix_is_only_used_at_its_speaking_rate(setup: Setup) -> None:
    await collect(setup.session, template(YELLOW))
    setup.engine.calls.clear()
    assert statuses(await collect(setup.session, template(JUDE, speaking_rate=1.5))) == [MISS, MISS, MISS]
    assert setup.engine.kinds() == ["render", "split", "render"]
    assert (await setup.stats())["tts.prefix.personal"].entries == 2


async def test_bypass_templates_neither_read_nor_store_prefixes(setup: Setup) -> None:
    await collect(setup.session, template(YELLOW))
    bypass = replace(ALICE, cache_policy=CachePolicy.BYPASS)
    chunks = await collect(setup.session, template(JUDE, context=bypass))
    assert statuses(chunks) == [NONE, NONE, NONE]
    assert "continue" not in setup.engine.kinds()
    assert (await setup.stats())["tts.prefix.personal"].entries == 1


# -- warmup -----------------------------------------------------------------------------------------


async def test_warmup_fills_the_global_tier(setup: Setup) -> None:
    base = request("", context=RequestContext())
    count = await setup.session.warmup(
        base, ["Lights are on.", "Good night."], ["Coming up next is {song_title}.", "{song} is next."]
    )
    assert count == (2, 1)  # a template that starts with its slot has no prefix
    assert ("split", ("coming", "up", "next", "is"), "song title.", 1.0) in setup.engine.calls
    stats = await setup.stats()
    assert stats["tts.phrase.global"].entries == 2
    assert stats["tts.prefix.global"].entries == 1
    assert stats["tts.phrase.personal"].entries == stats["tts.prefix.personal"].entries == 0
    setup.engine.calls.clear()

    assert statuses(await collect(setup.session, request("Lights are on.", context=BOB))) == [HIT]
    entities = (("song_title", "Yellow"),)
    req = request(
        "Coming up next is {song_title}.", input=SynthesisInput.TEMPLATE, entities=entities, context=BOB
    )
    chunks = await collect(setup.session, req)
    assert statuses(chunks) == [STITCHED, STITCHED]
    assert chunks[0].data == pcm(setup.engine.prefixes[0].audio)
    assert setup.engine.kinds() == ["continue"]


async def test_warmup_entries_do_not_expire() -> None:
    clock = [0.0]
    engine = FakeEngine()
    cache = SynthesisCache(MemoryStore(1 << 24, clock=lambda: clock[0]), personal_ttl_s=1.0)
    session = SynthesisSession(engine, SynthesisLimits(), cache)
    await session.warmup(request(""), ["Lights are on."], [])
    clock[0] += 1e6
    assert statuses(await collect(session, request("Lights are on."))) == [HIT]


async def test_warmup_rejects_empty_and_oversized_requests() -> None:
    setup = make_setup(limits=SynthesisLimits(max_warmup_items=2))
    base = request("")
    with pytest.raises(InvalidInput, match="needs phrases or templates"):
        await setup.session.warmup(base, [], [])
    with pytest.raises(InvalidInput, match="at most 2"):
        await setup.session.warmup(base, ["One.", "Two."], ["Next is {song}."])
    with pytest.raises(InvalidInput, match="text is empty"):
        await setup.session.warmup(base, ["One.", " "], [])
    with pytest.raises(InvalidInput, match="no {slot}"):
        await setup.session.warmup(base, ["One."], ["No slot here."])
    assert setup.engine.calls == []
    assert await setup.entries() == 0


async def test_warmup_needs_a_cache() -> None:
    session = SynthesisSession(FakeEngine(), SynthesisLimits())
    with pytest.raises(InvalidInput, match="without a synthesis cache"):
        await session.warmup(request(""), ["Hi."], [])


async def test_a_templates_only_warmup_checks_the_speaking_rate(setup: Setup) -> None:
    with pytest.raises(InvalidInput, match="speaking_rate"):
        await setup.session.warmup(request("", speaking_rate=3.0), [], ["Coming up next is {song}."])


# -- cancellation -----------------------------------------------------------------------------------

THREE_SENTENCES = "One is here. Two is here. Three is here."


async def test_closing_the_stream_after_one_chunk_stops_synthesis(setup: Setup) -> None:
    stream = setup.session.stream(request(THREE_SENTENCES))
    assert isinstance(stream, AsyncGenerator)  # annotated as an AsyncIterator, but closable
    first = await stream.__anext__()
    assert first.data == pcm(unit_audio("one is here.", 1.0))
    await stream.aclose()
    assert setup.engine.calls == [("render", "one is here.", 1.0)]
    assert await setup.entries() == 0
    # Nothing half-stored: the next request synthesizes everything.
    assert statuses(await collect(setup.session, request(THREE_SENTENCES))) == [MISS, MISS, MISS]


async def test_closing_a_template_stream_early_stores_no_prefix(setup: Setup) -> None:
    stream = setup.session.stream(template(YELLOW))
    assert isinstance(stream, AsyncGenerator)
    await stream.__anext__()
    await stream.aclose()
    assert setup.engine.kinds() == ["render"]
    assert await setup.entries() == 0


async def test_cancelling_a_consumer_mid_render_cancels_the_render(setup: Setup) -> None:
    setup.engine.hold = "two is here."
    received: list[EncodedAudio] = []

    async def consume() -> None:
        async for chunk in setup.session.stream(request(THREE_SENTENCES)):
            received.append(chunk)

    task = asyncio.create_task(consume())
    await setup.engine.holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(received) == 1
    assert setup.engine.cancelled == ["two is here."]
    assert [c[1] for c in setup.engine.calls] == ["one is here.", "two is here."]
    assert await setup.entries() == 0


class _BlockingEncoder:
    """Stands in for AudioEncoder: encode() blocks until released, close() is recorded."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.closed_while_encoding = False
        self.encoding = False
        self.closed = 0
        self.samples_out = 0

    def encode(self, audio: Float32Array) -> bytes:
        self.encoding = True
        self.entered.set()
        self.release.wait(30)
        self.encoding = False
        return b"x"

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        self.closed_while_encoding |= self.encoding
        self.closed += 1


async def test_a_reply_closed_mid_encode_is_closed_by_the_worker_when_it_is_done() -> None:
    emitter = ReplyEncoder(request("Hi."), RATE_HZ, RATE_HZ)
    fake = _BlockingEncoder()
    emitter.encoder = fake  # type: ignore[assignment]
    job = asyncio.create_task(asyncio.to_thread(emitter.encode, np.zeros(10, np.float32), MISS, last=False))
    assert await asyncio.to_thread(fake.entered.wait, 30)
    emitter.close()  # as the session's finally does when the caller goes away: it must not wait
    assert fake.closed == 0
    fake.release.set()
    await job
    assert fake.closed == 1 and not fake.closed_while_encoding
    with pytest.raises(RuntimeError, match="closed"):
        emitter.encode(np.zeros(10, np.float32), MISS, last=False)


def test_a_reply_is_encoded_one_piece_at_a_time() -> None:
    emitter = ReplyEncoder(request("Hi."), RATE_HZ, RATE_HZ)
    fake = _BlockingEncoder()
    emitter.encoder = fake  # type: ignore[assignment]
    first = threading.Thread(
        target=emitter.encode, args=(np.zeros(10, np.float32), MISS), kwargs={"last": False}
    )
    first.start()
    assert fake.entered.wait(30)
    with pytest.raises(RuntimeError, match="one piece at a time"):
        emitter.encode(np.zeros(10, np.float32), MISS, last=False)
    fake.release.set()
    first.join(30)
