from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pytest

from voxwire_server.engines.splicing import (
    CROSSFADE_SAMPLES,
    FRAME_SAMPLES,
    LEAD_FRAMES,
    MAX_CARRIED_WORDS,
    Float32Array,
    Frames,
    JointCheck,
    Prefix,
    check_joint,
    continue_prefix,
    joint_after,
    make_prefix,
    word_bounds,
)
from voxwire_server.storage.codec import pack, unpack

BINS = 601  # hibari.dsp's n_fft 1200: continue_prefix vocodes, so its frames need the real bin count
LOUD = -2.0
QUIET = -20.0


def frames_for(
    spans: list[tuple[int, int]],
    total: int,
    *,
    quiet: Iterable[int] = (),
    bins: int = 4,
    f0_hz: float = 120.0,
    level: float = LOUD,
) -> Frames:
    """Synthetic model output: every frame at `level` (harmonic, noise and residual parts) except the
    `quiet` ones, a steady F0, and the given word spans (start, end) in frames."""
    spectra = np.zeros((5, bins, total), np.float32)
    spectra[[0, 2, 3]] = level
    for frame in quiet:
        spectra[[0, 2, 3], :, frame] = QUIET
    f0 = np.full(total, f0_hz, np.float32)
    return Frames(spectra, f0, tuple(s for s, _ in spans), tuple(e for _, e in spans))


def waveform(frames: Frames, seed: int = 0) -> Float32Array:
    """Audio of the frames' length that differs everywhere (so slices can be told apart)."""
    n = frames.f0.shape[0] * FRAME_SAMPLES
    audio: Float32Array = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    return audio


# -- word_bounds ------------------------------------------------------------------------------------


def test_word_bounds_skip_the_padding_and_end_words_at_the_space() -> None:
    # ids: pad, a, b, " ", c, d, pad; durations count pairs of frames.
    starts, ends = word_bounds(list("ab cd"), np.array([1, 2, 3, 1, 2, 2, 1]))
    # Frame ends per id: 2, 6, 12, 14, 18, 22, 24.
    assert starts == (2, 14)
    assert ends == (12, 22)


def test_word_bounds_keep_trailing_punctuation_in_the_word() -> None:
    starts, ends = word_bounds(list("hi, yo."), np.ones(9, np.int64))
    # h 2-4, i 4-6, "," 6-8, " " 8-10, y 10-12, o 12-14, "." 14-16, pad 16-18.
    assert starts == (2, 10)
    assert ends == (8, 16)


def test_word_bounds_ignore_leading_and_repeated_spaces() -> None:
    starts, ends = word_bounds(list(" a  b "), np.array([2, 1, 1, 1, 1, 1, 1, 3]))
    # ids: pad 0-4, " " 4-6, a 6-8, " " 8-10, " " 10-12, b 12-14, " " 14-16, pad 16-22.
    assert starts == (6, 12)
    assert ends == (8, 14)


def test_word_bounds_of_no_words() -> None:
    assert word_bounds([" "], np.array([1, 1, 1])) == ((), ())


# -- joint_after ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "keep"),
    [
        (["plˈA"], 1),
        (["plˈA", "sˈʌmθɪŋ"], 2),
        (["plˈA", "ðə"], 1),  # "the" goes with the word after it
        (["ɡˈO", "tə", "ðə"], 2),  # "to" is not an article
        (["ɪn", "ə", "ðə"], 1),  # two articles in a row are both carried
        (["nˈɛkst", "ɪz", "æn", "ə", "ðə"], 3),  # at most MAX_CARRIED_WORDS
        (["ðə"], 1),  # never everything
        (["ə", "ðə"], 1),
    ],
)
def test_joint_after_carries_trailing_articles(words: list[str], keep: int) -> None:
    assert joint_after(words) == keep
    assert len(words) - keep <= MAX_CARRIED_WORDS


# -- Frames.joint ----------------------------------------------------------------------------------

# Two words: frames 2-12, a pause 12-20, then 20-30.
TWO_WORDS = [(2, 12), (20, 30)]


def test_after_a_clause_mark_the_joint_is_the_next_word_start() -> None:
    frames = frames_for(TWO_WORDS, 32, quiet=[10, 11])
    assert frames.joint(["wˈʌn,", "tˈu"], 1) == 20
    assert frames.joint(["wˈʌn;", "tˈu"], 1) == 20


def test_otherwise_the_joint_is_the_quietest_frame_pair_in_range() -> None:
    # The joint at c lies between frames c - 1 and c: quiet frames 14 and 15 put it at 15.
    assert frames_for(TWO_WORDS, 32, quiet=[14, 15]).joint(["wˈʌn", "tˈu"], 1) == 15


def test_the_joint_may_move_back_into_the_word_before_it() -> None:
    # The search starts JOINT_SEARCH_FRAMES (3) before the word's end at 12.
    assert frames_for(TWO_WORDS, 32, quiet=[9, 10]).joint(["wˈʌn", "tˈu"], 1) == 10


def test_quiet_frames_outside_the_range_are_not_chosen() -> None:
    frames = frames_for(TWO_WORDS, 32, quiet=[6, 7, 25, 26])
    # Only frames 8..20 are considered: everywhere else is equally loud, so the first candidate wins.
    assert frames.joint(["wˈʌn", "tˈu"], 1) == 9


def test_the_joint_never_cuts_into_the_lead_frames() -> None:
    frames = frames_for([(0, 5), (6, 12)], 14, quiet=[2, 3])
    assert frames.joint(["ə", "tˈu"], 1) == LEAD_FRAMES + 1


def test_after_the_last_word_the_joint_is_its_end() -> None:
    frames = frames_for(TWO_WORDS, 32, quiet=[14, 15])
    assert frames.joint(["wˈʌn", "tˈu"], 2) == 30


# -- make_prefix -----------------------------------------------------------------------------------

# "nˈɛkst ɪz ðə jˈɛlO": frames 2-12, 14-20, 22-28, 30-40 of 44; quiet where the joint should go.
SENTENCE = frames_for([(2, 12), (14, 20), (22, 28), (30, 40)], 44, quiet=[20, 21])
PREFIX_WORDS = ["nˈɛkst", "ɪz", "ðə"]


def test_make_prefix_cuts_at_the_joint_and_carries_the_article() -> None:
    audio = waveform(SENTENCE)
    prefix = make_prefix(SENTENCE, audio, PREFIX_WORDS)
    cut = 21  # after "ɪz": the quiet pair 20, 21
    joint = cut * FRAME_SAMPLES
    assert prefix.words == ("nˈɛkst", "ɪz")
    assert prefix.carried == ("ðə",)
    assert prefix.audio.shape == (joint - CROSSFADE_SAMPLES,)
    assert prefix.tail.shape == (CROSSFADE_SAMPLES,)
    np.testing.assert_array_equal(np.concatenate([prefix.audio, prefix.tail]), audio[:joint])
    np.testing.assert_array_equal(prefix.f0, SENTENCE.f0[:cut])
    np.testing.assert_array_equal(prefix.lead, SENTENCE.spectra[:, :, cut - LEAD_FRAMES : cut])
    assert prefix.energy_db.shape == (cut,)
    assert prefix.energy_db[cut - 1] < prefix.energy_db[cut - 3] - 50  # frame 20 is quiet, 18 is not
    assert prefix.word_starts == (2, 14)
    assert prefix.word_ends == (12, 20)
    for array in (prefix.audio, prefix.tail, prefix.f0, prefix.lead, prefix.energy_db):
        assert array.dtype == np.float32
        assert array.flags.c_contiguous


def test_make_prefix_refuses_a_prefix_too_short_to_splice() -> None:
    frames = frames_for([(0, 2), (3, 10)], 12)
    with pytest.raises(ValueError, match="too short"):
        make_prefix(frames, waveform(frames), ["hˈI,"])  # the joint would be at frame 3


# -- check_joint -----------------------------------------------------------------------------------


def made_prefix(frames: Frames = SENTENCE) -> Prefix:
    return make_prefix(frames, waveform(frames), PREFIX_WORDS)


def shifted(frames: Frames, *, f0_factor: float = 1.0, level_db_step: float = 0.0) -> Frames:
    spectra = frames.spectra.copy()
    # exp(2x) power: raising the log-amplitudes by d raises the level by 20 d / ln 10 dB.
    spectra[[0, 2, 3]] += level_db_step * math.log(10) / 20
    return Frames(spectra, frames.f0 * np.float32(f0_factor), frames.word_starts, frames.word_ends)


def test_check_joint_of_the_same_synthesis_finds_no_difference() -> None:
    prefix = made_prefix()
    check = check_joint(prefix, SENTENCE, len(prefix.words))
    assert check == JointCheck(pitch_st=0.0, step_db=0.0)


@pytest.mark.parametrize(("factor", "semitones"), [(2.0, 12.0), (0.5, 12.0), (2 ** (3 / 12), 3.0)])
def test_check_joint_measures_the_pitch_difference_in_semitones(factor: float, semitones: float) -> None:
    prefix = made_prefix()
    check = check_joint(prefix, shifted(SENTENCE, f0_factor=factor), len(prefix.words))
    assert check.pitch_st == pytest.approx(semitones, abs=1e-3)
    assert check.step_db == pytest.approx(0.0, abs=1e-4)


def test_check_joint_measures_the_loudness_step() -> None:
    prefix = made_prefix()
    check = check_joint(prefix, shifted(SENTENCE, level_db_step=6.0), len(prefix.words))
    assert check.step_db == pytest.approx(6.0, abs=1e-3)
    assert check.pitch_st == 0.0


def test_joint_check_passes_only_within_both_limits() -> None:
    assert JointCheck(2.0, 9.0).passes(3.0, 10.0)
    assert JointCheck(3.0, 10.0).passes(3.0, 10.0)
    assert not JointCheck(3.1, 1.0).passes(3.0, 10.0)
    assert not JointCheck(0.0, 10.5).passes(3.0, 10.0)


# -- continue_prefix -------------------------------------------------------------------------------


def vocodable_prefix() -> tuple[Prefix, Frames]:
    """A prefix of "nˈɛkst ɪz" at the real bin count, and a context "ɪz ðə jˈɛlO" whose joint after
    "ɪz" is at frame 11 (the quiet pair 10, 11)."""
    sentence = frames_for([(2, 12), (14, 20), (22, 28), (30, 40)], 44, quiet=[20, 21], bins=BINS)
    prefix = make_prefix(sentence, waveform(sentence, seed=1), PREFIX_WORDS)
    context = frames_for([(2, 10), (12, 16), (18, 30)], 34, quiet=[10, 11], bins=BINS)
    assert context.joint(list(prefix.words[-1:]), 1) == 11
    return prefix, context


def test_continue_prefix_is_the_tail_plus_the_frames_after_the_joint() -> None:
    prefix, context = vocodable_prefix()
    audio = continue_prefix(prefix, context, 1, seed=7)
    assert audio.dtype == np.float32
    assert audio.shape == (CROSSFADE_SAMPLES + (34 - 11) * FRAME_SAMPLES,)
    assert np.all(np.isfinite(audio))
    assert np.any(audio[CROSSFADE_SAMPLES:] != 0)


def test_continue_prefix_starts_from_the_cached_tail() -> None:
    prefix, context = vocodable_prefix()
    audio = continue_prefix(prefix, context, 1, seed=7)
    assert audio[0] == pytest.approx(float(prefix.tail[0]), abs=1e-6)
    # Only the crossfade depends on the tail.
    other_tail = Prefix.from_dict({**prefix.to_dict(), "tail": -prefix.tail})
    other = continue_prefix(other_tail, context, 1, seed=7)
    assert other[0] == pytest.approx(-float(prefix.tail[0]), abs=1e-6)
    assert np.all(audio[: CROSSFADE_SAMPLES // 2] != other[: CROSSFADE_SAMPLES // 2])
    np.testing.assert_array_equal(audio[CROSSFADE_SAMPLES:], other[CROSSFADE_SAMPLES:])


def test_continue_prefix_is_deterministic_per_seed() -> None:
    prefix, context = vocodable_prefix()
    np.testing.assert_array_equal(
        continue_prefix(prefix, context, 1, 3), continue_prefix(prefix, context, 1, 3)
    )
    assert not np.array_equal(continue_prefix(prefix, context, 1, 3), continue_prefix(prefix, context, 1, 4))


# -- Prefix round trip -----------------------------------------------------------------------------


def test_prefix_round_trips_through_the_store_codec() -> None:
    prefix = made_prefix()
    back = Prefix.from_dict(unpack(pack(prefix.to_dict())))
    for name in ("audio", "tail", "f0", "lead", "energy_db"):
        original, restored = getattr(prefix, name), getattr(back, name)
        assert restored.dtype == np.float32
        np.testing.assert_array_equal(restored, original)
    assert back.word_starts == prefix.word_starts == (2, 14)
    assert back.word_ends == prefix.word_ends
    assert back.words == prefix.words
    assert back.carried == prefix.carried == ("ðə",)


def test_prefix_from_a_dict_without_carried_words() -> None:
    data = made_prefix().to_dict()
    del data["carried"]
    assert Prefix.from_dict(data).carried == ()
