from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from voxwire_server.domain import Endpointing, UtteranceEnd
from voxwire_server.sessions.endpointing import Endpointer, SpeechStarted, UtteranceEnded

RATE = 16000


class EnergyVad:
    """A stand-in VAD for pattern tests: loud frames are speech."""

    def __init__(self, frame_ms: int = 30) -> None:
        self.frame_ms = frame_ms

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        return bool(np.abs(frame).mean() > 1000)


def pattern(*parts: tuple[str, float]) -> npt.NDArray[np.int16]:
    out = []
    for kind, seconds in parts:
        n = int(RATE * seconds)
        level = 5000 if kind == "speech" else 0
        out.append(np.full(n, level, np.int16) * np.where(np.arange(n) % 2, 1, -1).astype(np.int16))
    return np.concatenate(out)


def run(endpointer: Endpointer, audio: npt.NDArray[np.int16], chunk: int = 1600) -> list[object]:
    events: list[object] = []
    for i in range(0, audio.size, chunk):
        events.extend(endpointer.push(audio[i : i + chunk]))
    events.extend(endpointer.flush())
    return events


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_two_utterances_with_offsets_and_pre_roll(frame_ms: int) -> None:
    audio = pattern(("silence", 1.0), ("speech", 1.0), ("silence", 1.0), ("speech", 0.5), ("silence", 1.0))
    endpointing = Endpointing(silence_ms=600, min_speech_ms=90, pre_roll_ms=300)
    events = run(Endpointer(EnergyVad(frame_ms), endpointing), audio)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "UtteranceEnded", "SpeechStarted", "UtteranceEnded"]
    first_start, first_end = events[0], events[1]
    assert isinstance(first_start, SpeechStarted) and isinstance(first_end, UtteranceEnded)
    assert abs(first_start.speech_start - RATE) <= 480  # within a frame of the true onset
    assert first_end.audio_start <= RATE - int(0.25 * RATE)  # pre-roll kept before the onset
    assert abs(first_end.speech_end - 2 * RATE) <= 480
    assert not first_end.forced and first_end.end is UtteranceEnd.SILENCE
    assert [e.utterance_index for e in events] == [0, 0, 1, 1]  # type: ignore[attr-defined]
    second = events[3]
    assert isinstance(second, UtteranceEnded)
    assert abs(second.speech_end - int(3.5 * RATE)) <= 480


def test_short_blips_do_not_start_speech() -> None:
    audio = pattern(("silence", 0.5), ("speech", 0.03), ("silence", 1.0))
    assert run(Endpointer(EnergyVad(), Endpointing(min_speech_ms=90)), audio) == []


def test_max_utterance_cuts_long_speech() -> None:
    audio = pattern(("speech", 3.5), ("silence", 1.0))
    events = run(Endpointer(EnergyVad(), Endpointing(max_utterance_s=1.5)), audio)
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ended) >= 2
    assert ended[0].forced and ended[0].end is UtteranceEnd.MAX_DURATION
    assert ended[0].audio.size <= int(1.5 * RATE) + 480
    # Nothing is lost across the cut: the pieces cover the speech.
    assert sum(e.audio.size for e in ended) >= int(3.4 * RATE)


def test_end_of_audio_closes_the_open_utterance() -> None:
    audio = pattern(("silence", 0.3), ("speech", 1.0))
    events = run(Endpointer(EnergyVad(), Endpointing()), audio, chunk=333)
    assert isinstance(events[-1], UtteranceEnded)
    assert events[-1].audio_start + events[-1].audio.size == audio.size
    assert events[-1].end is UtteranceEnd.END_OF_AUDIO


def test_a_forced_cut_falls_in_the_quietest_pause_before_the_limit() -> None:
    # 6 s of "speech" with a short soft dip (a pause between words) at 4.2 s, a limit of 5 s: the
    # cut goes in the dip, not at 5 s through a word, and the rest starts the next utterance at once.
    audio = pattern(("speech", 4.2), ("silence", 0.12), ("speech", 1.68), ("silence", 1.0))
    events = run(Endpointer(EnergyVad(), Endpointing(max_utterance_s=5.0, silence_ms=600)), audio)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "UtteranceEnded", "SpeechStarted", "UtteranceEnded"]
    first, restart, second = events[1], events[2], events[3]
    assert isinstance(first, UtteranceEnded) and isinstance(restart, SpeechStarted)
    assert isinstance(second, UtteranceEnded)
    assert first.forced and not second.forced
    cut = first.audio_start + first.audio.size
    assert int(4.2 * RATE) <= cut <= int(4.32 * RATE)
    assert first.speech_end == cut
    # The next utterance begins exactly at the cut: no sample lost or heard twice.
    assert restart.speech_start == second.audio_start == cut
    assert second.utterance_index == first.utterance_index + 1
    joined = np.concatenate([first.audio, second.audio])
    assert np.array_equal(joined, audio[first.audio_start : first.audio_start + joined.size])


def test_without_a_pause_the_cut_still_loses_nothing() -> None:
    audio = pattern(("speech", 7.0), ("silence", 1.0))
    events = run(Endpointer(EnergyVad(), Endpointing(max_utterance_s=2.0)), audio)
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ended) == 4 and all(e.forced for e in ended[:-1])
    for before, after in zip(ended, ended[1:], strict=False):
        assert after.audio_start == before.audio_start + before.audio.size
        assert before.audio.size <= 2 * RATE
    assert ended[-1].audio_start + ended[-1].audio.size >= int(7.0 * RATE)


class CountingVad(EnergyVad):
    def __init__(self, frame_ms: int = 30) -> None:
        super().__init__(frame_ms)
        self.heard = 0

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        self.heard += 1
        return super().is_speech(frame)


def _same(a: list[object], b: list[object]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, UtteranceEnded) and isinstance(y, UtteranceEnded):
            if not np.array_equal(x.audio, y.audio) or (x.audio_start, x.speech_end, x.end, x.forced) != (
                y.audio_start,
                y.speech_end,
                y.end,
                y.forced,
            ):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("frame_ms", [10, 30])
def test_an_endpointer_restored_from_a_snapshot_goes_on_exactly_as_the_original(frame_ms: int) -> None:
    from voxwire_server.storage.codec import pack, unpack

    config = Endpointing(silence_ms=300, max_utterance_s=2.0, min_speech_ms=60, pre_roll_ms=120)
    audio = pattern(
        ("silence", 0.5),
        ("speech", 1.0),
        ("silence", 0.5),
        ("speech", 3.3),
        ("silence", 0.2),
        ("speech", 0.4),
    )
    whole = run(Endpointer(EnergyVad(frame_ms), config), audio)
    assert sum(isinstance(e, UtteranceEnded) for e in whole) >= 4  # a pause, a forced cut, the end
    # Snapshots taken before speech, in the pre-roll, mid-utterance, mid-frame, in the trailing
    # silence and right after a forced cut.
    for cut in range(0, audio.size, 1777):
        first = Endpointer(EnergyVad(frame_ms), config)
        events = first.push(audio[:cut])
        resumed = Endpointer(EnergyVad(frame_ms), config)
        resumed.restore(unpack(pack(first.snapshot())))
        events += run(resumed, audio[cut:])
        assert _same(events, whole), f"differs when resumed at sample {cut}"


class RunningMeanVad(CountingVad):
    """A VAD with state, as webrtcvad has: a frame is speech when louder than the mean level heard."""

    def __init__(self, frame_ms: int = 30) -> None:
        super().__init__(frame_ms)
        self.total = 0.0

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        self.heard += 1
        level = float(np.abs(frame).mean())
        self.total += level
        return level > 1000 and level > 0.5 * self.total / self.heard


def test_a_vad_with_state_is_renewed_so_a_restored_endpointer_decides_as_the_original() -> None:
    from voxwire_server.storage.codec import pack, unpack

    config = Endpointing(silence_ms=300, max_utterance_s=2.0, min_speech_ms=60, pre_roll_ms=120)
    audio = pattern(
        ("silence", 3.0),
        ("speech", 1.0),
        ("silence", 0.5),
        ("speech", 3.3),
        ("silence", 2.5),
        ("speech", 0.4),
    )

    def endpointer() -> Endpointer:
        return Endpointer(RunningMeanVad(), config, renew_vad=RunningMeanVad)

    whole = run(endpointer(), audio)
    assert sum(isinstance(e, UtteranceEnded) for e in whole) >= 4
    for cut in range(0, audio.size, 1777):
        first = endpointer()
        events = first.push(audio[:cut])
        resumed = endpointer()
        resumed.restore(unpack(pack(first.snapshot())))
        events += run(resumed, audio[cut:])
        assert _same(events, whole), f"differs when resumed at sample {cut}"
    # Without renewal the restored VAD has not heard what the old one had.
    first = Endpointer(RunningMeanVad(), config)
    first.push(audio[: audio.size // 2])
    assert first.snapshot()["heard"].size < audio.size // 2


def test_the_audio_a_snapshot_holds_stays_bounded_through_silence_and_long_speech() -> None:
    config = Endpointing(silence_ms=300, max_utterance_s=2.0, min_speech_ms=60, pre_roll_ms=120)
    endpointer = Endpointer(RunningMeanVad(), config, renew_vad=RunningMeanVad)
    for kind, seconds in (("silence", 30.0), ("speech", 30.0)):
        endpointer.push(pattern((kind, seconds)))
        # The renewal period, its warm-up and at most one utterance (max_utterance_s) of audio.
        assert endpointer.snapshot()["heard"].size <= RATE * (2.0 + 0.5 + 2.0)


def test_restore_refuses_a_foreign_or_broken_snapshot() -> None:
    config = Endpointing(silence_ms=300, min_speech_ms=60, pre_roll_ms=120)
    first = Endpointer(EnergyVad(30), config)
    first.push(pattern(("silence", 0.5), ("speech", 1.0)))
    state = first.snapshot()
    assert state["speaking"] and state["utterance_frames"] > 0
    vad = CountingVad(30)
    Endpointer(vad, config).restore(state)
    assert vad.heard == state["heard"].size // 480
    with pytest.raises(ValueError, match="samples"):
        Endpointer(EnergyVad(10), config).restore(state)
    for broken in (
        {"utterance_frames": 10_000},
        {"speaking": False},
        {"ring_frames": 3},
        {"loudness": np.zeros(1)},
        {"heard": state["heard"][:-1]},
        {"leftover": np.zeros(480, np.int16)},
        {"position": -1},
    ):
        with pytest.raises(ValueError, match="inconsistent"):
            Endpointer(EnergyVad(30), config).restore({**state, **broken})
    with pytest.raises(ValueError, match="not an endpointer snapshot"):
        Endpointer(EnergyVad(30), config).restore({"position": 3})
