"""Acoustic frames of hibari's model, and splicing freshly synthesized speech onto a cached prefix.

hibari's acoustic model emits, per 12.5 ms frame, five spectral parts (601 bins each) and F0; its
vocoder (``hibari.dsp``) turns them into a waveform from a pulse train whose phase is the running
sum of F0. A cached prefix keeps its audio (all but a short tail, held back for the crossfade), its
F0 track and its last few frames. A continuation is synthesized with the prefix's last words as
context (so it keeps the sentence's prosody), those words' frames are dropped, and the rest is
vocoded together with the prefix's last frames as lead-in and a pulse train that continues the
prefix's phase; the held-back tail is crossfaded (equal power) into it. NOTES measured this at 0 %
WER and an 11 Hz pitch jump where a crossfade of a standalone prefix jumped 111 Hz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

FRAME_SAMPLES = 300  # hibari.dsp.HOP at 24 kHz: 12.5 ms
FRAMES_PER_DURATION_UNIT = 2  # the model's phoneme durations count pairs of output frames
# Frames of the prefix vocoded again as lead-in, so the overlap-add at the joint is complete.
LEAD_FRAMES = 4
# Equal-power crossfade at the joint (10 ms at 24 kHz; NOTES: 10–20 ms never clicked).
CROSSFADE_SAMPLES = 240
# "the", "a", "an" as hibari's G2P writes them: carried from the prefix into the continuation.
ARTICLES = frozenset({"ðə", "ði", "ðɪ", "ə", "ɐ", "ɐn", "ən", "æn"})
MAX_CARRIED_WORDS = 2
# A word ending in one of these is followed by a pause: the joint goes after the pause.
PAUSE_MARKS = (",", ";", ":", "—", "–")
# The joint may move this many frames back into the word before it, to a quieter frame.
JOINT_SEARCH_FRAMES = 3
# F0 below this is unvoiced (hibari.dsp.pulses uses the same threshold).
VOICED_HZ = 40.0
# Loudness leading into the joint is compared over at least this many frames (200 ms).
STEP_FRAMES = 16


@dataclass(frozen=True, slots=True)
class Frames:
    """One model call's output: spectral parts [5, bins, F], F0 [F], and its words' frame spans."""

    spectra: Float32Array
    f0: Float32Array
    word_starts: tuple[int, ...]
    # Frame index where each word ends (the start of the space after it, or the last frame).
    word_ends: tuple[int, ...]

    def joint(self, words: list[str] | tuple[str, ...], n_words: int) -> int:
        """Frame of the joint after the first n_words words. After a clause mark, the start of the
        next word (the pause stays on the cached side). Otherwise the quietest point between the
        word's last frames and the next word's start: a join where the signal is weakest is the
        least audible, and each synthesis picks its own, so their timing need not agree."""
        end = self.word_ends[n_words - 1]
        if n_words >= len(self.word_starts):
            return end
        if words[n_words - 1].endswith(PAUSE_MARKS):
            return self.word_starts[n_words]
        energy = energy_db(self.spectra[:, :, : self.word_starts[n_words] + 1])
        candidates = range(max(LEAD_FRAMES + 1, end - JOINT_SEARCH_FRAMES), self.word_starts[n_words] + 1)
        return min(
            candidates, key=lambda c: float(energy[c - 1] + energy[min(c, energy.size - 1)]), default=end
        )


@dataclass(frozen=True, slots=True)
class Prefix:
    """What the cache keeps of a template's prefix: everything needed to continue it seamlessly."""

    audio: Float32Array  # native-rate samples up to the joint, less the held-back tail
    tail: Float32Array  # the last CROSSFADE_SAMPLES before the joint
    f0: Float32Array  # F0 of every frame up to the joint (the pulse phase continues from it)
    lead: Float32Array  # the LEAD_FRAMES frames before the joint [5, bins, LEAD_FRAMES]
    energy_db: Float32Array  # per-frame energy up to the joint, for the joint check
    word_starts: tuple[int, ...]
    word_ends: tuple[int, ...]
    words: tuple[str, ...]  # the phoneme words before the joint
    # Articles of the template prefix after the joint: synthesized again with the entities.
    carried: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "audio": self.audio,
            "tail": self.tail,
            "f0": self.f0,
            "lead": self.lead,
            "energy_db": self.energy_db,
            "word_starts": list(self.word_starts),
            "word_ends": list(self.word_ends),
            "words": list(self.words),
            "carried": list(self.carried),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Prefix:
        return Prefix(
            audio=np.asarray(data["audio"], np.float32),
            tail=np.asarray(data["tail"], np.float32),
            f0=np.asarray(data["f0"], np.float32),
            lead=np.asarray(data["lead"], np.float32),
            energy_db=np.asarray(data["energy_db"], np.float32),
            word_starts=tuple(int(x) for x in data["word_starts"]),
            word_ends=tuple(int(x) for x in data["word_ends"]),
            words=tuple(str(x) for x in data["words"]),
            carried=tuple(str(x) for x in data.get("carried", ())),
        )


@dataclass(frozen=True, slots=True)
class JointCheck:
    """How well the continuation fits the cached prefix where they meet.

    The word before the joint exists twice: as cached and as synthesized again in the continuation's
    context. pitch_st: difference of that word's median F0, in semitones; step_db: difference of the
    level of the speech leading into the joint, i.e. the loudness step the joint adds.
    """

    pitch_st: float
    step_db: float

    def passes(self, max_pitch_st: float, max_step_db: float) -> bool:
        return self.pitch_st <= max_pitch_st and self.step_db <= max_step_db


def word_bounds(tokens: list[str], durations: npt.NDArray[Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Word starts and ends in frames, from the model's per-token durations.

    ``tokens`` are the phoneme symbols the model saw (without its two padding ids); ``durations`` has
    one entry per id, padding included."""
    ends = np.cumsum(np.asarray(durations, np.int64)) * FRAMES_PER_DURATION_UNIT
    starts: list[int] = []
    stops: list[int] = []
    in_word = False
    for i, symbol in enumerate(tokens):
        token_start, token_end = int(ends[i]), int(ends[i + 1])  # id i + 1 is token i
        if symbol == " ":
            if in_word:
                stops.append(token_start)
            in_word = False
        elif not in_word:
            starts.append(token_start)
            in_word = True
        if in_word and i == len(tokens) - 1:
            stops.append(token_end)
    return tuple(starts), tuple(stops)


def energy_db(spectra: Float32Array) -> Float32Array:
    """Per-frame energy in dB of the harmonic, noise and residual parts."""
    lh, _, ln, lr, _ = spectra
    power = (
        np.exp(2 * np.minimum(lh, 7.0)) + np.exp(2 * np.minimum(ln, 7.0)) + np.exp(2 * np.minimum(lr, 7.0))
    )
    db: Float32Array = (10 * np.log10(power.sum(axis=0) + 1e-12)).astype(np.float32)
    return db


def joint_after(words: list[str]) -> int:
    """How many prefix words the cached audio keeps. Trailing articles ("the", "a", "an") are carried
    over into the continuation: they are pronounced with the word after them (cut after "the", ASR
    heard "the kitchen" as "their kitchen" and "the bookstore" as "a bookstore")."""
    keep = len(words)
    while keep > 1 and len(words) - keep < MAX_CARRIED_WORDS and words[keep - 1] in ARTICLES:
        keep -= 1
    return keep


def make_prefix(frames: Frames, audio: Float32Array, words: list[str]) -> Prefix:
    """The prefix made of the first words of a synthesis of prefix + rest (see joint_after)."""
    keep = joint_after(words)
    cut = frames.joint(words, keep)
    joint = cut * FRAME_SAMPLES
    if cut < LEAD_FRAMES or joint < CROSSFADE_SAMPLES:
        raise ValueError("prefix too short to splice onto")
    return Prefix(
        audio=np.ascontiguousarray(audio[: joint - CROSSFADE_SAMPLES], np.float32),
        tail=np.ascontiguousarray(audio[joint - CROSSFADE_SAMPLES : joint], np.float32),
        f0=np.ascontiguousarray(frames.f0[:cut], np.float32),
        lead=np.ascontiguousarray(frames.spectra[:, :, cut - LEAD_FRAMES : cut], np.float32),
        energy_db=energy_db(frames.spectra[:, :, :cut]),
        word_starts=frames.word_starts[:keep],
        word_ends=frames.word_ends[:keep],
        words=tuple(words[:keep]),
        carried=tuple(words[keep:]),
    )


def check_joint(prefix: Prefix, context: Frames, context_words: int) -> JointCheck:
    """Compares the word before the joint as cached and as synthesized again in the continuation."""
    a0, a1 = prefix.word_starts[-1], prefix.word_ends[-1]
    b0, b1 = context.word_starts[context_words - 1], context.word_ends[context_words - 1]
    pitch = _median_voiced(prefix.f0[a0:a1]), _median_voiced(context.f0[b0:b1])
    pitch_st = abs(12 * math.log2(pitch[0] / pitch[1])) if pitch[0] and pitch[1] else 0.0
    # The level of the speech leading into the joint: the loudest frame of the word before it (and of
    # the frames before that word, up to STEP_FRAMES), robust to how long its final pause or fade is.
    cached = float(np.max(prefix.energy_db[max(0, min(a0, a1 - STEP_FRAMES)) : a1]))
    again = float(np.max(energy_db(context.spectra[:, :, max(0, min(b0, b1 - STEP_FRAMES)) : b1])))
    return JointCheck(pitch_st, abs(cached - again))


def _mean_db(frames_db: Float32Array) -> float:
    """Energy of a stretch of frames: the mean power (quiet frames barely count)."""
    if frames_db.size == 0:
        return 0.0
    return float(10 * np.log10(np.mean(np.power(10.0, frames_db / 10.0))))


def _median_voiced(f0: Float32Array) -> float:
    voiced = f0[f0 > VOICED_HZ]
    return float(np.median(voiced)) if voiced.size else 0.0


def continue_prefix(prefix: Prefix, context: Frames, context_words: int, seed: int) -> Float32Array:
    """Audio from the joint on: the held-back tail crossfaded into the continuation, then the rest.

    ``context`` is a synthesis of the prefix's last ``context_words`` words, its carried articles and
    the new text."""
    from hibari import dsp

    cut = context.joint(prefix.words[-context_words:], context_words)
    spectra = np.concatenate([prefix.lead, context.spectra[:, :, cut:]], axis=2)
    n_frames = spectra.shape[2]
    # The pulse train's phase is the running sum of F0 from the start of the utterance.
    pulses = dsp.pulses(np.concatenate([prefix.f0, context.f0[cut:]]))
    start = (prefix.f0.shape[0] - LEAD_FRAMES) * FRAME_SAMPLES
    audio = _vocode(spectra, pulses[start:], n_frames, np.random.default_rng(seed))
    lead = LEAD_FRAMES * FRAME_SAMPLES
    ramp = np.linspace(0.0, math.pi / 2, CROSSFADE_SAMPLES, dtype=np.float32)
    faded = prefix.tail * np.cos(ramp) + audio[lead - CROSSFADE_SAMPLES : lead] * np.sin(ramp)
    return np.concatenate([faded, audio[lead:]]).astype(np.float32)


def _vocode(
    spectra: Float32Array, pulses: Float32Array, n_frames: int, rng: np.random.Generator
) -> Float32Array:
    """hibari's spectral model for frames whose pulse train is given: harmonic part shaped by lh and
    theta, noise by ln, and the free-phase part lr/phi; then hibari's inverse STFT."""
    from hibari import dsp

    lh, theta, ln, lr, phi = spectra
    spec = dsp.stft(pulses, n_frames)
    spec *= (dsp.ex(lh) * np.exp(1j * np.pi * np.tanh(theta))).astype(np.complex64)
    noise = rng.standard_normal((lh.shape[0], 2 * n_frames), dtype=np.float32).view(np.complex64)
    spec += noise * dsp.ex(ln)
    spec += (dsp.ex(lr) * np.exp(1j * phi)).astype(np.complex64)
    return np.asarray(dsp.ola(spec), np.float32)
