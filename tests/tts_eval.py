"""Template stitching measured: our own ASR on the audio (through the server), and pitch read off the
audio with an autocorrelation tracker at the joint and at the word boundaries of full syntheses.

Shared by tests/integration/test_stitching_quality.py (the acceptance bar) and
benchmarks/tts_load.py (the figures)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tests.helpers import wer
from voxwire import AudioEncoding, CachePolicy, Client, RecognitionConfig
from voxwire_server.engines.tts import HibariSynthesizer

# 20 assistant templates × 2 entity sets; entities are words (no digits) so WER needs no number rules.
TEMPLATES: list[tuple[str, list[dict[str, str]]]] = [
    ("Coming up next is {song} by {artist}.", [
        {"song": "Bohemian Rhapsody", "artist": "Queen"},
        {"song": "Hotel California", "artist": "the Eagles"}]),
    ("Your timer for {duration} is set.", [{"duration": "ten minutes"}, {"duration": "two hours"}]),
    ("The weather in {city} is {condition} today.", [
        {"city": "Chicago", "condition": "sunny"}, {"city": "Paris", "condition": "rainy"}]),
    ("Okay, I set an alarm for {time}.", [{"time": "seven thirty"}, {"time": "six in the morning"}]),
    ("I added {item} to your shopping list.", [{"item": "oat milk"}, {"item": "two dozen eggs"}]),
    ("Turning on the lights in the {room}.", [{"room": "kitchen"}, {"room": "living room"}]),
    ("Sending a message to {name}.", [{"name": "Alice"}, {"name": "Doctor Patel"}]),
    ("Your next meeting is {meeting} at {time}.", [
        {"meeting": "the design review", "time": "three"},
        {"meeting": "lunch with Sam", "time": "noon"}]),
    ("Setting the thermostat to {degrees} degrees.", [{"degrees": "seventy two"}, {"degrees": "sixty five"}]),
    ("Here is a recipe for {dish}.", [{"dish": "banana bread"}, {"dish": "chicken curry"}]),
    ("Now playing the playlist {playlist}.", [
        {"playlist": "morning jazz"}, {"playlist": "road trip classics"}]),
    ("Calling {name} on their mobile phone.", [{"name": "Grandma"}, {"name": "Michael Jordan"}]),
    ("The next train to {station} leaves in {minutes} minutes.", [
        {"station": "Union Station", "minutes": "five"},
        {"station": "the airport", "minutes": "twelve"}]),
    ("Reminder: your appointment with {person} is tomorrow.", [
        {"person": "the dentist"}, {"person": "Doctor Smith"}]),
    ("Your package from {store} will arrive on {day}.", [
        {"store": "the bookstore", "day": "Friday"}, {"store": "Target", "day": "Monday"}]),
    ("Navigating to {place}, the drive takes about {duration}.", [
        {"place": "the office", "duration": "twenty minutes"},
        {"place": "Central Park", "duration": "an hour"}]),
    ("I found three restaurants near {place}.", [{"place": "the river"}, {"place": "your hotel"}]),
    ("Today's top story is about {topic}.", [{"topic": "the election"}, {"topic": "a new telescope"}]),
    ("Welcome back, {name}. You have new messages.", [{"name": "Olivia"}, {"name": "Captain Rogers"}]),
    ("Translating {phrase} into Spanish.", [{"phrase": "good morning"}, {"phrase": "where is the library"}]),
]  # fmt: skip

SAMPLE_RATE_HZ = 16000
_SPAN_S = 0.1  # pitch is compared within 100 ms either side of a boundary


@dataclass
class StitchEvaluation:
    stitched_wer: float = 0.0
    full_wer: float = 0.0
    statuses: list[str] = field(default_factory=list)


@dataclass
class PitchEvaluation:
    """Pitch steps (Hz, voiced on both sides) across stitched joints, across every word boundary of
    the full sentences, and across the full sentences' boundary at the joint's place."""

    joint_jumps_hz: list[float] = field(default_factory=list)
    natural_jumps_hz: list[float] = field(default_factory=list)
    same_boundary_jumps_hz: list[float] = field(default_factory=list)
    joints_failing_check: int = 0

    @property
    def joint_median_hz(self) -> float:
        return statistics.median(self.joint_jumps_hz)

    @property
    def natural_median_hz(self) -> float:
        return statistics.median(self.natural_jumps_hz)


def pitch_track(audio: npt.NDArray[np.float32], rate_hz: int, hop_s: float = 0.01) -> npt.NDArray[np.float64]:
    """F0 every hop_s from normalised autocorrelation over 40 ms (0 = unvoiced), 70–400 Hz."""
    n, hop = int(0.04 * rate_hz), int(hop_s * rate_hz)
    lo, hi = int(rate_hz / 400), int(rate_hz / 70)
    out = []
    for start in range(0, max(0, audio.size - n), hop):
        x = audio[start : start + n].astype(np.float64)
        x = x - x.mean()
        energy = float(np.dot(x, x))
        if energy < n * 1e-6:
            out.append(0.0)
            continue
        r = np.correlate(x, x, "full")[n - 1 :] / energy
        lag = lo + int(np.argmax(r[lo:hi]))
        out.append(rate_hz / lag if r[lag] > 0.6 else 0.0)
    return np.asarray(out)


def jump_at(track: npt.NDArray[np.float64], at_s: float, hop_s: float = 0.01) -> float | None:
    """Last voiced F0 before at_s against the first voiced after (None if one side is unvoiced)."""
    centre = int(round(at_s / hop_s)) - 2  # a track frame covers [i·hop, i·hop + 40 ms]
    span = int(_SPAN_S / hop_s)
    before = [f for f in track[max(0, centre - span) : max(0, centre)] if f > 0]
    after = [f for f in track[max(0, centre) : centre + span] if f > 0]
    if not before or not after:
        return None
    return abs(before[-1] - after[0])


def evaluate_wer(client: Client, *, user_id: str = "stitch-eval") -> StitchEvaluation:
    """Warms the templates up, then for each entity set a stitched reply and a full synthesis of the
    same sentence (cache bypassed), both transcribed by the server's own recognizer."""
    result = StitchEvaluation()
    fmt = {"encoding": AudioEncoding.LINEAR16, "sample_rate_hz": SAMPLE_RATE_HZ}
    pcm = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=SAMPLE_RATE_HZ)
    client.warmup(templates=[t for t, _ in TEMPLATES], **fmt)
    stitched_pairs, full_pairs = [], []
    for template, entity_sets in TEMPLATES:
        for entities in entity_sets:
            text = template.format(**entities)
            chunks = list(
                client.synthesize_stream(template=template, entities=entities, user_id=user_id, **fmt)
            )
            result.statuses.extend(c.cache_status.value for c in chunks)
            stitched = b"".join(c.audio for c in chunks)
            full = client.synthesize(text=text, cache_policy=CachePolicy.BYPASS, **fmt).audio
            stitched_pairs.append((text, client.recognize(stitched, pcm).text))
            full_pairs.append((text, client.recognize(full, pcm).text))
    result.stitched_wer = wer(stitched_pairs)
    result.full_wer = wer(full_pairs)
    return result


def evaluate_pitch(synthesizer: HibariSynthesizer, *, context_words: int = 3) -> PitchEvaluation:
    """In process, where the word boundaries are exact: each template's prefix is made the way
    Warmup makes it (slot names standing in for entities), each entity set is spliced on, and pitch
    is read off the resulting audio; the natural steps come from full syntheses of the sentences."""
    import asyncio

    async def run() -> PitchEvaluation:
        out = PitchEvaluation()
        voice = synthesizer.default_voice
        rate = synthesizer.sample_rate_hz
        for template, entity_sets in TEMPLATES:
            cut = template.index("{")
            words = (await synthesizer.phonemes(voice, template[:cut])).split()
            names = {name: name for name in _slots(template)}
            stand_in = await synthesizer.phonemes(voice, template[cut:].format(**names))
            _, prefix = await synthesizer.render_split(voice, words, stand_in, 1.0)
            for entities in entity_sets:
                rest = await synthesizer.phonemes(voice, template[cut:].format(**entities))
                audio, check = await synthesizer.continue_prefix(voice, prefix, context_words, rest, 1.0)
                out.joints_failing_check += not check.passes(3.0, 10.0)
                stitched = np.concatenate([prefix.audio, audio])
                joint_s = (prefix.audio.size + prefix.tail.size) / rate
                jump = jump_at(pitch_track(stitched, rate), joint_s)
                if jump is not None:
                    out.joint_jumps_hz.append(jump)
                full, bounds = await synthesizer.render_timed(voice, " ".join([*words, rest]), 1.0)
                track = pitch_track(full, rate)
                for k, end_s in enumerate(bounds[:-1]):
                    natural = jump_at(track, end_s)
                    if natural is None:
                        continue
                    out.natural_jumps_hz.append(natural)
                    if k == len(prefix.words) - 1:
                        out.same_boundary_jumps_hz.append(natural)
        return out

    return asyncio.run(run())


def _slots(template: str) -> list[str]:
    import re

    return re.findall(r"\{(\w+)\}", template)
